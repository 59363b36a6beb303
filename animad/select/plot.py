"""The loss plot, drawn with Pillow: raw curve, smoothed curve, noise band, floor and picks."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

from animad.select.sheet import font

WIDTH, HEIGHT = 1000, 520
LEFT, RIGHT, TOP, BOTTOM = 80, 24, 40, 60
COLOURS = {"raw": (120, 160, 220), "train": (200, 200, 205), "smooth": (30, 80, 170), "band": (225, 236, 250),
           "floor": (200, 60, 60), "pick": (30, 150, 80), "axis": (60, 60, 60), "grid": (235, 235, 235),
           "ignored": (200, 120, 0)}


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    start = math.ceil(low / step) * step
    ticks, value = [], start
    while value <= high + 1e-12:
        ticks.append(round(value, 12))
        value += step
    return ticks


def loss_plot(analysis: dict, out: Path, train_losses: dict[int, float] | None = None,
              title: str = "stable eval loss") -> None:
    epochs = analysis.get("epochs") or []
    losses = analysis.get("losses") or []
    smoothed = analysis.get("smoothed") or []
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    label_font, title_font = font(13), font(16)
    points = [(e, v) for e, v in zip(epochs, losses) if v is not None and math.isfinite(v)]
    ignored = set(analysis.get("ignored_epochs") or [])
    shown = [v for e, v in points if e not in ignored]
    if not points or not shown:
        draw.text((LEFT, TOP), "no finite loss values to plot", fill=COLOURS["axis"], font=title_font)
        image.save(out, format="PNG")
        return
    x_low, x_high = min(epochs), max(max(epochs), min(epochs) + 1)
    y_low, y_high = min(shown), max(shown)
    margin = (y_high - y_low) * 0.08 or abs(y_high) * 0.05 or 1.0
    y_low, y_high = y_low - margin, y_high + margin

    def x_of(epoch):
        return LEFT + (epoch - x_low) / (x_high - x_low) * (WIDTH - LEFT - RIGHT)

    def y_of(value):
        value = min(max(value, y_low), y_high)
        return TOP + (y_high - value) / (y_high - y_low) * (HEIGHT - TOP - BOTTOM)

    noise = float(analysis.get("noise") or 0)
    lowest = analysis.get("lowest_epoch")
    lowest_loss = dict(points).get(lowest)
    if lowest_loss is not None and noise > 0:  # the band the shortlist's dips must fall in
        draw.rectangle([LEFT, y_of(lowest_loss + 2 * noise), WIDTH - RIGHT, y_of(lowest_loss)], fill=COLOURS["band"])
    for tick in nice_ticks(y_low, y_high):
        y = y_of(tick)
        draw.line([LEFT, y, WIDTH - RIGHT, y], fill=COLOURS["grid"])
        draw.text((8, y - 7), f"{tick:.4g}", fill=COLOURS["axis"], font=label_font)
    for tick in nice_ticks(x_low, x_high, 8):
        if tick == int(tick):
            x = x_of(tick)
            draw.line([x, HEIGHT - BOTTOM, x, HEIGHT - BOTTOM + 5], fill=COLOURS["axis"])
            draw.text((x - 8, HEIGHT - BOTTOM + 8), f"{int(tick)}", fill=COLOURS["axis"], font=label_font)
    draw.line([LEFT, TOP, LEFT, HEIGHT - BOTTOM, WIDTH - RIGHT, HEIGHT - BOTTOM], fill=COLOURS["axis"], width=2)
    draw.text((WIDTH // 2 - 20, HEIGHT - 24), "epoch", fill=COLOURS["axis"], font=label_font)
    draw.text((LEFT, 10), title, fill=COLOURS["axis"], font=title_font)
    if train_losses:
        train = [(e, v) for e, v in sorted(train_losses.items()) if math.isfinite(v) and y_low <= v <= y_high]
        if len(train) > 1:
            draw.line([(x_of(e), y_of(v)) for e, v in train], fill=COLOURS["train"], width=1)
    clean = [(e, v) for e, v in points if e not in ignored]
    if len(clean) > 1:
        draw.line([(x_of(e), y_of(v)) for e, v in clean], fill=COLOURS["raw"], width=1)
    smooth = [(e, v) for e, v in zip(epochs, smoothed) if v is not None and math.isfinite(v)]
    if len(smooth) > 1:
        draw.line([(x_of(e), y_of(v)) for e, v in smooth], fill=COLOURS["smooth"], width=3)
    for epoch in ignored:
        value = dict(points).get(epoch)
        x, y = x_of(epoch), (y_of(value) if value is not None else TOP + 6)
        draw.line([x - 5, y - 5, x + 5, y + 5], fill=COLOURS["ignored"], width=2)
        draw.line([x - 5, y + 5, x + 5, y - 5], fill=COLOURS["ignored"], width=2)
    floor = analysis.get("floor_epoch")
    if floor is not None:
        x = x_of(floor)
        for y in range(TOP, HEIGHT - BOTTOM, 8):  # dashed vertical line
            draw.line([x, y, x, min(y + 4, HEIGHT - BOTTOM)], fill=COLOURS["floor"], width=2)
        draw.text((x + 4, TOP + 2), f"floor: epoch {floor}", fill=COLOURS["floor"], font=label_font)
    for pick in analysis.get("picks") or []:
        x, y = x_of(pick["epoch"]), y_of(pick["loss"])
        draw.ellipse([x - 6, y - 6, x + 6, y + 6], outline=COLOURS["pick"], width=3)
        draw.text((x - 10, y + 9), f"e{pick['epoch']}", fill=COLOURS["pick"], font=label_font)
    legend = [("raw", "per-epoch loss"), ("smooth", "smoothed"), ("band", "noise band of the lowest"),
              ("pick", "shortlisted"), ("floor", "floor")]
    if train_losses:
        legend.insert(0, ("train", "train epoch average"))
    x = WIDTH - RIGHT - 170
    for i, (key, text) in enumerate(legend):
        y = TOP + 4 + 18 * i
        draw.rectangle([x, y + 3, x + 14, y + 11], fill=COLOURS[key])
        draw.text((x + 20, y), text, fill=COLOURS["axis"], font=label_font)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG")
