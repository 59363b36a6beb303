"""The contact sheet: one PNG, rows are epochs (baseline first), columns are prompts, labelled."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

LABEL_WIDTH = 180
HEADER_HEIGHT = 56
PAD = 6
BACKGROUND = (24, 24, 28)
TEXT = (235, 235, 240)
MUTED = (160, 160, 170)


def font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow
        return ImageFont.load_default()


def shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def contact_sheet(rows: list[str], row_labels: dict[str, str], prompts: list[str],
                  cells: dict[tuple[str, int], Path], out: Path, cell_size: int = 256) -> tuple[int, int]:
    """Write the sheet; returns its (width, height). Missing cells are left dark."""
    columns = len(prompts)
    width = LABEL_WIDTH + columns * (cell_size + PAD) + PAD
    height = HEADER_HEIGHT + len(rows) * (cell_size + PAD) + PAD
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    small, big = font(13), font(16)
    chars = max(10, cell_size // 7)
    for column, prompt in enumerate(prompts):
        x = LABEL_WIDTH + column * (cell_size + PAD) + PAD
        draw.text((x, 8), f"prompt {column + 1}", fill=TEXT, font=big)
        draw.text((x, 30), shorten(prompt, chars), fill=MUTED, font=small)
    for row_index, row in enumerate(rows):
        y = HEADER_HEIGHT + row_index * (cell_size + PAD) + PAD
        label = row_labels.get(row, row)
        words, line, lines = label.split(), "", []
        for word in words:  # wrap the label into the left column
            if len(line) + len(word) + 1 > 20 and line:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines.append(line)
        for i, text in enumerate(lines[:4]):
            draw.text((PAD + 4, y + cell_size // 2 - 20 + 20 * i), text, fill=TEXT if i == 0 else MUTED,
                      font=big if i == 0 else small)
        for column in range(columns):
            path = cells.get((row, column))
            if path is None or not Path(path).is_file():
                continue
            with Image.open(path) as image:
                tile = image.convert("RGB")
            scale = cell_size / max(tile.width, tile.height)  # small previews are enlarged to fill the cell
            resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
            tile = tile.resize((max(1, round(tile.width * scale)), max(1, round(tile.height * scale))), resample)
            x = LABEL_WIDTH + column * (cell_size + PAD) + PAD
            sheet.paste(tile, (x + (cell_size - tile.width) // 2, y + (cell_size - tile.height) // 2))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG")
    return width, height
