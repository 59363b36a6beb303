"""Make a user-supplied string safe to print on a terminal, in a log line or in a report.

A job name or a file name is chosen by whoever drops a folder. Printed raw, an ESC sequence can clear
the screen or set the window title, a newline can forge a report or log line, and a bidi override can
make text read backwards. Every printer passes user text through `safe`, which shows each such
character as a visible escape (\\x1b, \\n, \\u202e); ordinary text, accents and CJK included, is
left as it is.
"""

from __future__ import annotations

import unicodedata

# Format characters that reorder or hide text (bidi embeddings, overrides, isolates, marks) and the
# Unicode line and paragraph separators, which some terminals and editors treat as newlines.
_INVISIBLE = set("\u061c\u200b\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e"
                 "\u2066\u2067\u2068\u2069\ufeff")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def safe(text, keep_newlines: bool = False) -> str:
    """text (any object, through str) with every control or bidi character shown as an escape.

    keep_newlines=True keeps "\\n" as a line break, for text whose lines animad composed itself
    (a report whose fields were already made safe); everything else is still escaped.
    """
    text = str(text)
    if text.isprintable():  # no control, format or separator character at all: the usual case
        return text
    out = []
    for char in text:
        if keep_newlines and char == "\n":
            out.append(char)
        elif char in _INVISIBLE or unicodedata.category(char) == "Cc":
            out.append(_escape(char))
        else:
            out.append(char)
    return "".join(out)
