"""The contact sheet: one PNG, rows are epochs (baseline first), columns are prompts, labelled.

Layout, in pixels: a label column of LABEL_WIDTH on the left, a header band of HEADER_HEIGHT on top,
then one tile per (row, prompt) with PAD between tiles and around the edge. Tiles are CELL_SIZE
wide; their height follows the previews' aspect ratio (portrait previews get tall tiles).
"""

from __future__ import annotations

import functools
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

CELL_SIZE = 256
LABEL_WIDTH = 200
HEADER_HEIGHT = 84
PAD = 8
BACKGROUND = (24, 24, 28)
EMPTY_TILE = (44, 44, 52)
TEXT = (238, 238, 242)
MUTED = (165, 165, 178)
ACCENT = (110, 170, 255)
# Pillow's bundled font covers little beyond ASCII. User text (job names, prompts with Japanese
# character names, accents) falls back to the first of these system fonts that has its glyphs.
FALLBACK_FONTS = ("DejaVuSans.ttf", "NotoSans-Regular.ttf", "NotoSansCJK-Regular.ttc", "NotoSansJP-Regular.otf",
                  "DroidSansFallbackFull.ttf", "LiberationSans-Regular.ttf")


@functools.lru_cache(maxsize=None)
def font(size: int, name: str | None = None):
    """Pillow's bundled font at a given size, or the named TrueType font (OSError if not installed)."""
    if name is not None:
        return ImageFont.truetype(name, size)
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: only the small bitmap font
        return ImageFont.load_default()


@functools.lru_cache(maxsize=8192)
def has_glyph(text_font, char: str) -> bool:
    """Whether the font draws char as itself rather than as its 'missing glyph' box."""
    missing = text_font.getmask("\uffff")  # a noncharacter: always the missing-glyph box
    mask = text_font.getmask(char)
    return mask.size != missing.size or bytes(mask) != bytes(missing)


def font_for(text: str, size: int):
    """The bundled font when it can draw all of text, else the installed fallback that misses fewest glyphs."""
    chars = {char for char in str(text) if not char.isspace()}
    best = font(size)
    best_missing = sum(not has_glyph(best, char) for char in chars)
    for name in FALLBACK_FONTS:
        if best_missing == 0:
            break
        try:
            candidate = font(size, name)
        except OSError:
            continue
        missing = sum(not has_glyph(candidate, char) for char in chars)
        if missing < best_missing:
            best, best_missing = candidate, missing
    return best


def fit_text(draw: ImageDraw.ImageDraw, text: str, text_font, width: float) -> str:
    """Cut text (adding an ellipsis) so it fits in width pixels."""
    if draw.textlength(text, font=text_font) <= width:
        return text
    while text and draw.textlength(text + "\u2026", font=text_font) > width:
        text = text[:-1]
    return text.rstrip() + "\u2026"


def wrap_text(draw: ImageDraw.ImageDraw, text: str, text_font, width: float, max_lines: int) -> list[str]:
    """Wrap text into at most max_lines lines of width pixels; the last one ends in '…' if cut."""
    lines, line = [], ""
    words = " ".join(str(text).split()).split(" ")
    for index, word in enumerate(words):
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=text_font) <= width or not line:
            line = candidate
            continue
        lines.append(line)
        line = word
        if len(lines) == max_lines:
            line = " ".join(words[index:])
            break
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1] + "\u2026"
    return [fit_text(draw, item, text_font, width) for item in lines]


def tile_size(cells: dict, cell_size: int = CELL_SIZE) -> tuple[int, int]:
    """(width, height) of one tile: cell_size wide, as tall as the first preview's aspect says (0.5-2x)."""
    for path in cells.values():
        try:
            with Image.open(path) as image:
                width, height = image.size
        except OSError:
            continue
        ratio = min(max(height / max(width, 1), 0.5), 2.0)
        return cell_size, round(cell_size * ratio)
    return cell_size, cell_size


def paste_fitted(sheet: Image.Image, path: Path, box: tuple[int, int, int, int]) -> bool:
    """Scale the image to fit the box (keeping its aspect) and paste it centred; False if unreadable."""
    left, top, width, height = box
    try:
        with Image.open(path) as image:
            tile = image.convert("RGB")
    except OSError:
        return False
    scale = min(width / tile.width, height / tile.height)
    # Tiny test renders are enlarged with hard pixels; real previews are shrunk smoothly.
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
    tile = tile.resize((max(1, round(tile.width * scale)), max(1, round(tile.height * scale))), resample)
    sheet.paste(tile, (left + (width - tile.width) // 2, top + (height - tile.height) // 2))
    return True


def contact_sheet(rows: list[str], row_labels: dict[str, str], prompts: list[str],
                  cells: dict[tuple[str, int], Path], out: Path, *, seeds: list[int] | None = None,
                  title: str | None = None, cell_size: int = CELL_SIZE,
                  kinds: list[str] | None = None) -> tuple[int, int]:
    """Write the sheet for cells {(row, prompt_index): png} to out; return its (width, height).

    Rows come in the given order; a missing or unreadable image leaves a marked empty tile. kinds:
    a short word per prompt ("caption", "novel"...) shown in its column heading.
    """
    tile_width, tile_height = tile_size(cells, cell_size)
    columns = len(prompts)
    width = LABEL_WIDTH + columns * (tile_width + PAD) + PAD
    height = HEADER_HEIGHT + len(rows) * (tile_height + PAD) + PAD
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    small, medium = font(13), font(15)

    if title:
        title_font = font_for(title, 18)
        draw.text((PAD + 4, PAD + 2), fit_text(draw, title, title_font, LABEL_WIDTH - 2 * PAD), fill=TEXT,
                  font=title_font)
    draw.text((PAD + 4, PAD + 28), "rows: epochs", fill=MUTED, font=small)
    draw.text((PAD + 4, PAD + 46), "columns: prompts", fill=MUTED, font=small)

    for column, prompt in enumerate(prompts):
        x = LABEL_WIDTH + column * (tile_width + PAD)
        seed = seeds[column] if seeds and column < len(seeds) else None
        kind = kinds[column] if kinds and column < len(kinds) and kinds[column] else None
        heading = (f"{column + 1}  \u00b7  {kind}" if kind else f"prompt {column + 1}") + \
            (f"  \u00b7  seed {seed}" if seed is not None else "")
        draw.text((x, PAD + 2), fit_text(draw, heading, medium, tile_width), fill=TEXT, font=medium)
        prompt_font = font_for(prompt, 13)
        for line_index, line in enumerate(wrap_text(draw, prompt, prompt_font, tile_width, 3)):
            draw.text((x, PAD + 24 + 17 * line_index), line, fill=MUTED, font=prompt_font)

    for row_index, row in enumerate(rows):
        y = HEADER_HEIGHT + row_index * (tile_height + PAD)
        label = row_labels.get(row, row)
        label_font = font_for(label, 18)
        lines = wrap_text(draw, label, label_font, LABEL_WIDTH - 3 * PAD, 4)
        text_top = y + (tile_height - 24 * len(lines)) // 2
        colour = MUTED if row == "baseline" else TEXT
        for line_index, line in enumerate(lines):
            draw.text((PAD + 4, text_top + 24 * line_index), line, fill=colour, font=label_font)
        if row == "baseline" and row_index + 1 < len(rows):  # set the reference row apart from the LoRA rows
            line_y = y + tile_height + PAD // 2
            draw.line([PAD, line_y, width - PAD, line_y], fill=ACCENT, width=2)
        for column in range(columns):
            box = (LABEL_WIDTH + column * (tile_width + PAD), y, tile_width, tile_height)
            path = cells.get((row, column))
            if path is None or not paste_fitted(sheet, path, box):
                left, top = box[0], box[1]
                draw.rectangle([left, top, left + tile_width - 1, top + tile_height - 1], fill=EMPTY_TILE)
                draw.text((left + tile_width // 2, top + tile_height // 2), "not rendered", fill=MUTED,
                          font=medium, anchor="mm")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG")
    return width, height
