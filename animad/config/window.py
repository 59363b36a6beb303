"""The window grammar of animad.yaml: what `windows:` entries mean.

A window is `HH:MM-HH:MM` (it may cross midnight), optionally preceded by days (`mon-fri`,
`sat,sun`); the days name the day the window *starts* on. `always` is always open. The maths on
datetimes is in daemon/window.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
FORMAT_HELP = "use 'HH:MM-HH:MM' (e.g. '22:00-07:00'), with optional days ('mon-fri 22:00-07:00'), or 'always'"


@dataclasses.dataclass(frozen=True)
class Window:
    days: frozenset[int] | None  # weekday numbers (Monday = 0) the window starts on; None = every day
    start: dt.time | None  # None means "always"
    end: dt.time | None

    @property
    def always(self) -> bool:
        return self.start is None


def _parse_days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.lower().split(","):
        part = part.strip()
        if "-" in part:
            first, last = (p.strip()[:3] for p in part.split("-", 1))
            if first not in DAYS or last not in DAYS:
                raise ValueError(f"unknown day range '{part}'")
            i = DAYS.index(first)
            while True:
                days.add(i)
                if i == DAYS.index(last):
                    break
                i = (i + 1) % 7
        elif part[:3] in DAYS:
            days.add(DAYS.index(part[:3]))
        else:
            raise ValueError(f"unknown day '{part}'")
    return frozenset(days)


def _parse_time(text: str) -> dt.time:
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    if not match or int(match.group(1)) > 24 or int(match.group(2)) > 59:
        raise ValueError(f"'{text}' is not a time like 22:00")
    hour, minute = int(match.group(1)), int(match.group(2))
    return dt.time(0, 0) if hour == 24 else dt.time(hour, minute)


def parse_window(text: str) -> Window:
    text = str(text).strip()
    if text.lower() == "always":
        return Window(None, None, None)
    match = re.fullmatch(r"(?:(?P<days>[A-Za-z,\- ]+?)\s+)?(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})", text)
    if not match:
        raise ValueError(f"'{text}' is not a window; {FORMAT_HELP}")
    days = _parse_days(match.group("days")) if match.group("days") else None
    start, end = _parse_time(match.group("start")), _parse_time(match.group("end"))
    if start == end:
        raise ValueError(f"'{text}' starts and ends at the same time; use 'always' for a window that never closes")
    return Window(days, start, end)


def parse_windows(texts: list[str]) -> list[Window]:
    if not texts:
        raise ValueError(f"no window given; {FORMAT_HELP}")
    return [parse_window(t) for t in texts]
