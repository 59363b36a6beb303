"""The loss plot, drawn with Pillow: the curve, its smoothed version, the noise band, the floor and the picks.

Two panels when it helps: the whole run on top and, below it, a zoom on the floor region. At the
scale of the whole run the shortlisted epochs usually sit within a few pixels of each other; the
zoom shows how they compare with the noise, which is the point of the plot.

Only shortlisted epochs get a ring. The floor line is drawn strong when its epoch is a pick and
faint, labelled "not shortlisted", when it is not, so that a marked epoch the review has no
preview of is never taken for one. The steep descent (before the knee, where nothing is picked)
and the cooldown (LR annealed to 0) are shaded, so the reader sees where the picks could come from.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from PIL import Image, ImageDraw

from animad.select.floor_words import FloorNumbers, plot_status
from animad.select.sheet import font
from animad.select.try_first import BAND_SIGMAS  # the shortlist's band: dips within it of the lowest loss

WIDTH = 1100
LEFT, RIGHT = 86, 28  # room for the y tick labels / a little air on the right
RIGHT_AXIS = 86  # the right margin when the train loss has an axis of its own there
SHARED_SPAN = 2.0  # train and eval share one scale while it spans at most this many times the eval's own
TITLE_HEIGHT = 44
MAIN_HEIGHT = 380
GAP = 92  # x tick labels of the top panel plus the zoom panel's heading
ZOOM_HEIGHT = 250
BOTTOM = 58  # x tick labels and the axis name
COLOURS = {
    "background": (255, 255, 255), "axis": (70, 70, 78), "grid": (232, 232, 236), "text": (40, 40, 48),
    "muted": (120, 120, 130), "raw": (130, 170, 225), "smooth": (25, 75, 165), "train": (150, 150, 160),
    "band": (222, 234, 250), "floor": (200, 50, 50), "candidate": (150, 150, 150), "pick": (20, 140, 70),
    "ignored": (215, 120, 0), "descent": (243, 243, 245), "cooldown": (233, 246, 238),
}


@dataclasses.dataclass
class Panel:
    """A plotting area (left, top, right, bottom in pixels) and the data ranges it maps."""

    left: int
    top: int
    right: int
    bottom: int
    x_low: float
    x_high: float
    y_low: float
    y_high: float

    def x(self, epoch: float) -> float:
        return self.left + (epoch - self.x_low) / (self.x_high - self.x_low) * (self.right - self.left)

    def y(self, value: float) -> float:
        return self.top + (self.y_high - value) / (self.y_high - self.y_low) * (self.bottom - self.top)

    def contains_x(self, epoch: float) -> bool:
        return self.x_low <= epoch <= self.x_high


def nice_step(span: float, count: int) -> float:
    raw = max(span, 1e-12) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * 0.999)


def nice_ticks(low: float, high: float, count: int = 6, integer: bool = False) -> tuple[list[float], float]:
    """Round tick values covering [low, high], about `count` of them, and the step between them."""
    step = nice_step(high - low, count)
    if integer:
        step = max(1, math.ceil(step))
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    index = 0
    while first + index * step <= high + step * 1e-9:
        ticks.append(first + index * step)
        index += 1
    return ticks, step


def tick_label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if round(step * 10 ** decimals, 6) % 1:  # steps like 0.25 need one more digit
        decimals += 1
    return f"{value:.{decimals}f}"


def finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def read_series(analysis: dict) -> dict:
    """The plottable parts of a FloorAnalysis dict, with non-finite values dropped."""
    epochs = analysis.get("epochs") or []
    ignored = set(analysis.get("ignored_epochs") or [])
    losses = dict(zip(epochs, analysis.get("losses") or []))
    return {
        "raw": [(e, v) for e, v in losses.items() if finite(v) and e not in ignored],
        "smooth": [(e, v) for e, v in zip(epochs, analysis.get("smoothed") or []) if finite(v)],
        "ignored": [(e, losses.get(e)) for e in sorted(ignored)],
        "picks": [p for p in analysis.get("picks") or [] if finite(p.get("loss"))],
        "noise": float(analysis.get("noise") or 0.0) if finite(analysis.get("noise")) else 0.0,
        "lowest": losses.get(analysis.get("lowest_epoch")),
        "floor": analysis.get("floor_epoch"),
        "candidate": candidate_shown(analysis),
        "status": analysis.get("status"),
        "status_text": status_text(analysis),
        "knee": analysis.get("knee_epoch"),
        "cooldown": sorted(analysis.get("cooldown_epochs") or []),
    }


def candidate_shown(analysis: dict) -> int | None:
    """The possible floor the plot marks: none where its loss is past the noise of the lowest, as the text says."""
    numbers = FloorNumbers.from_dict(analysis.get("numbers"))
    if numbers is not None and not numbers.candidate_in_band():
        return None
    return analysis.get("candidate_epoch")


def status_text(analysis: dict) -> str:
    """The plot's status line: floor_words.plot_status, the same verdict the page's text gives."""
    numbers = FloorNumbers.from_dict(analysis.get("numbers"))
    if numbers is not None:
        return plot_status(numbers)
    return {"floor": f"floor confirmed at epoch {analysis.get('floor_epoch')}", "no_floor_yet": "no floor found",
            "too_short": "too few epochs to find a floor"}.get(analysis.get("status") or "", "")


def value_range(values: list[float], extra: float = 0.06) -> tuple[float, float]:
    low, high = min(values), max(values)
    margin = (high - low) * extra or abs(high) * 0.05 or 1.0
    return low - margin, high + margin


def zoom_panel_ranges(series: dict, x_low: float, x_high: float) -> tuple[float, float, float, float] | None:
    """Data ranges for the zoom on the floor region, or None when a zoom would show nothing new."""
    noise, lowest = series["noise"], series["lowest"]
    if not series["picks"] or noise <= 0 or not finite(lowest):
        return None
    marks = [p["epoch"] for p in series["picks"]] + [e for e in (series["floor"], series["candidate"]) if e is not None]
    pad = max(3.0, 0.08 * (x_high - x_low))
    start, end = max(x_low, min(marks) - pad), x_high
    values = [v for e, v in series["raw"] + series["smooth"] if start <= e <= end]
    band_low, band_high = lowest - BAND_SIGMAS * noise, lowest + BAND_SIGMAS * noise
    # Every pick stays on the scale: picks spread over a slow tail can sit well above the band.
    top = max([min(max(values + [band_high]), lowest + 10 * noise)] + [p["loss"] for p in series["picks"]])
    y_low, y_high = value_range([min(values + [band_low]), top], 0.08)
    full_low, full_high = value_range([v for _, v in series["raw"] + series["smooth"]])
    if start <= x_low or end - start < 2 or (y_high - y_low) > 0.6 * (full_high - full_low):
        return None  # it would show the same epochs, or nearly the same scale, as the whole-run panel
    return start, end, y_low, y_high


def floor_marks(series: dict) -> list[tuple[str, int, bool]]:
    """The confirmed floor, or else the unconfirmed candidate, as (colour key, epoch, shortlisted)."""
    picked = {p["epoch"] for p in series["picks"]}
    if series["floor"] is not None:
        return [("floor", series["floor"], series["floor"] in picked)]
    if series["candidate"] is not None:
        return [("candidate", series["candidate"], series["candidate"] in picked)]
    return []


def floor_label(key: str, epoch: int, shortlisted: bool) -> str:
    """Given a floor mark, return its label: whether it is confirmed, and whether it is a pick with previews."""
    what = f"floor: epoch {epoch}" if key == "floor" else f"possible floor: epoch {epoch} (not confirmed)"
    return what if shortlisted else f"{what}, not shortlisted"


def shaded_stretches(series: dict) -> list[tuple[str, float, float, str]]:
    """The stretches to shade, as (colour key, first epoch, last epoch, label): the steep descent and the cooldown."""
    stretches = []
    epochs = [e for e, _ in series["raw"]]
    if series["knee"] is not None and epochs and series["knee"] > min(epochs):
        stretches.append(("descent", min(epochs), series["knee"], "steep descent"))
    if series["cooldown"]:
        stretches.append(("cooldown", series["cooldown"][0] - 0.5, series["cooldown"][-1], "cooldown: LR to 0"))
    return stretches


def train_scale(panel: Panel, train: list[tuple[int, float]]) -> Panel | None:
    """Where the train loss is drawn: on the panel's own scale when it fits there, else on a scale of its
    own (the right axis). None: nothing to draw.

    The train loss of a run that barely moves can sit far from the eval loss; clipped to the eval's
    narrow range, its line would cross the chart as vertical strokes. Its own scale always shows it.
    """
    values = [v for e, v in train if panel.contains_x(e)]
    if len(values) < 2:
        return None
    if panel.y_low <= min(values) and max(values) <= panel.y_high:
        return panel
    return dataclasses.replace(panel, y_low=value_range(values)[0], y_high=value_range(values)[1])


def draw_lines(image: Image.Image, panel: Panel, series: dict, train: list[tuple[int, float]],
               train_panel: Panel | None = None) -> None:
    """Band, curves, floor marker: drawn on a layer the size of the panel, so nothing spills out of it.

    train_panel maps the train loss (its own scale, or the panel itself); None draws no train line.
    """
    layer = Image.new("RGBA", (panel.right - panel.left + 1, panel.bottom - panel.top + 1), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)

    def local(points, scale=panel):
        return [(scale.x(e) - panel.left, scale.y(v) - panel.top) for e, v in points]

    for key, first, last, _ in shaded_stretches(series):
        left, right = panel.x(max(first, panel.x_low)) - panel.left, panel.x(min(last, panel.x_high)) - panel.left
        if right > left:
            draw.rectangle([left, 0, right, layer.height], fill=COLOURS[key] + (255,))
    noise, lowest = series["noise"], series["lowest"]
    if noise > 0 and finite(lowest):
        top, bottom = local([(0, lowest + BAND_SIGMAS * noise), (0, lowest - BAND_SIGMAS * noise)])
        draw.rectangle([0, top[1], layer.width, bottom[1]], fill=COLOURS["band"] + (255,))
    raw_width = 2 if len(series["raw"]) <= 150 else 1  # long runs: thin lines, or the noise becomes a smear
    if train_panel is not None:
        points = [(e, v) for e, v in train if panel.contains_x(e)]
        draw.line(local(points, train_panel), fill=COLOURS["train"] + (255,), width=2, joint="curve")
    for key, points, line_width in (("raw", series["raw"], raw_width), ("smooth", series["smooth"], 3)):
        if len(points) > 1:
            draw.line(local(points), fill=COLOURS[key] + (255,), width=line_width, joint="curve")
    for key, epoch, shortlisted in floor_marks(series):
        if epoch is None or not panel.contains_x(epoch):
            continue
        x = panel.x(epoch) - panel.left
        # dashed; faint and thin when the epoch is not a pick, so it does not read as one
        colour, width, step = (COLOURS[key] + (255,), 2, 10) if shortlisted else (COLOURS[key] + (110,), 1, 14)
        for y in range(0, layer.height, step):
            draw.line([x, y, x, y + 5], fill=colour, width=width)
    image.paste(layer, (panel.left, panel.top), layer)


def draw_axes(draw: ImageDraw.ImageDraw, panel: Panel, fonts: dict) -> None:
    y_ticks, y_step = nice_ticks(panel.y_low, panel.y_high, 6)
    for tick in y_ticks:
        y = panel.y(tick)
        draw.line([panel.left, y, panel.right, y], fill=COLOURS["grid"])
        draw.text((panel.left - 8, y), tick_label(tick, y_step), fill=COLOURS["axis"], font=fonts["tick"], anchor="rm")
    x_ticks, _ = nice_ticks(panel.x_low, panel.x_high, 10, integer=True)
    for tick in x_ticks:
        x = panel.x(tick)
        draw.line([x, panel.bottom, x, panel.bottom + 5], fill=COLOURS["axis"], width=1)
        draw.text((x, panel.bottom + 8), str(int(tick)), fill=COLOURS["axis"], font=fonts["tick"], anchor="mt")
    corner = [panel.left, panel.top, panel.left, panel.bottom, panel.right, panel.bottom]
    draw.line(corner, fill=COLOURS["axis"], width=2)


def draw_right_axis(draw: ImageDraw.ImageDraw, scale: Panel, fonts: dict) -> None:
    """The train loss's own scale: tick labels on the right, in its colour."""
    ticks, step = nice_ticks(scale.y_low, scale.y_high, 6)
    for tick in ticks:
        y = scale.y(tick)
        draw.line([scale.right, y, scale.right + 5, y], fill=COLOURS["train"], width=1)
        draw.text((scale.right + 8, y), tick_label(tick, step), fill=COLOURS["train"], font=fonts["tick"], anchor="lm")
    draw.line([scale.right, scale.top, scale.right, scale.bottom], fill=COLOURS["train"], width=2)


def draw_marks(draw: ImageDraw.ImageDraw, panel: Panel, series: dict, fonts: dict, detailed: bool,
               avoid: tuple[float, float, float, float] | None = None) -> None:
    """Floor label, ignored epochs (crosses) and the picks (rings labelled with their epoch).

    avoid is a box (the legend) the floor label must not be drawn over.
    """
    for key, first, last, label in shaded_stretches(series):
        # the descent's label sits at its foot, which the falling curve leaves empty; the cooldown
        # (low on the right, under the curve and the legend) is named in the legend alone
        left = panel.x(max(first, panel.x_low))
        if key == "descent" and not detailed and panel.contains_x(last) and panel.x(last) - left > 40:
            draw.text(((left + panel.x(last)) / 2, panel.bottom - 6), label,
                      fill=COLOURS["muted"], font=fonts["tick"], anchor="mb")
    for key, epoch, shortlisted in floor_marks(series):
        if epoch is not None and panel.contains_x(epoch):
            text = floor_label(key, epoch, shortlisted)
            x = panel.x(epoch)
            text_width = draw.textlength(text, font=fonts["label"])
            anchor = "la" if x + 6 + text_width < panel.right else "ra"
            left = x + 6 if anchor == "la" else x - 6 - text_width
            top = panel.top + 4
            if avoid and left < avoid[2] and left + text_width > avoid[0]:
                top = avoid[3] + 6
            draw.text((x + (6 if anchor == "la" else -6), top), text,
                      fill=COLOURS[key] if shortlisted else COLOURS["muted"], font=fonts["label"],
                      anchor=anchor, stroke_width=3, stroke_fill=COLOURS["background"])
    for epoch, value in series["ignored"]:
        if not panel.contains_x(epoch):
            continue
        x = panel.x(epoch)
        y = panel.y(value) if finite(value) else panel.top + 8
        y = min(max(y, panel.top + 6), panel.bottom - 6)  # spikes far off the scale sit on the edge
        draw.line([x - 5, y - 5, x + 5, y + 5], fill=COLOURS["ignored"], width=2)
        draw.line([x - 5, y + 5, x + 5, y - 5], fill=COLOURS["ignored"], width=2)
    for index, pick in enumerate(sorted(series["picks"], key=lambda p: p["epoch"])):
        if not panel.contains_x(pick["epoch"]):
            continue
        x, y = panel.x(pick["epoch"]), min(max(panel.y(pick["loss"]), panel.top), panel.bottom)
        draw.ellipse([x - 6, y - 6, x + 6, y + 6], fill=(255, 255, 255), outline=COLOURS["pick"], width=3)
        text = f"e{pick['epoch']}" + (f" {pick.get('kind', '')}" if detailed else "")
        below = index % 2 == 0  # alternate so neighbouring labels do not collide
        label_y = y + 10 if below else y - 10
        if label_y + 16 > panel.bottom:
            label_y, below = y - 10, False
        if label_y - 16 < panel.top:
            label_y, below = y + 10, True
        half = draw.textlength(text, font=fonts["label"]) / 2 + 2
        label_x = min(max(x, panel.left + half), panel.right - half)  # keep labels at the edges inside the image
        draw.text((label_x, label_y), text, fill=COLOURS["pick"], font=fonts["label"], anchor="mt" if below else "mb",
                  stroke_width=3, stroke_fill=(255, 255, 255))


def draw_legend(draw: ImageDraw.ImageDraw, panel: Panel, series: dict, train: str | None,
                fonts: dict) -> tuple[float, float, float, float]:
    """Draw the legend in the panel's top right corner; return its box. train: None (no train line),
    "shared" (on the loss axis) or "right" (on an axis of its own)."""
    entries = []
    if train:
        entries.append(("train", "line", "train loss (epoch average)" + (", right axis" if train == "right" else "")))
    entries += [("raw", "line", "loss per epoch"), ("smooth", "line", "smoothed")]
    if series["noise"] > 0 and finite(series["lowest"]):
        entries.append(("band", "box", f"noise band: lowest \u00b1 {BAND_SIGMAS:g} sigma"))
    if series["picks"]:
        entries.append(("pick", "ring", "shortlisted epoch"))
    for key, _, shortlisted in floor_marks(series):
        words = "floor" if key == "floor" else "possible floor (not confirmed)"
        entries.append((key, "dash", words if shortlisted else f"{words}, not shortlisted"))
    for key, _, _, label in shaded_stretches(series):
        entries.append((key, "box", "steep descent (no picks)" if key == "descent" else "cooldown: LR annealed to 0"))
    if series["ignored"]:
        entries.append(("ignored", "cross", "ignored (spike / NaN)"))
    width = 24 + max(draw.textlength(text, font=fonts["label"]) for _, _, text in entries) + 36
    left, top = panel.right - width - 10, panel.top + 10
    box = (left, top, left + width, top + 10 + 20 * len(entries))
    draw.rectangle(box, fill=(255, 255, 255), outline=COLOURS["grid"], width=1)
    for index, (key, shape, text) in enumerate(entries):
        x, y = left + 10, top + 15 + 20 * index
        colour = COLOURS[key]
        if shape == "line":
            draw.line([x, y, x + 24, y], fill=colour, width=3)
        elif shape == "box":
            draw.rectangle([x, y - 6, x + 24, y + 6], fill=colour, outline=COLOURS["raw"])
        elif shape == "ring":
            draw.ellipse([x + 6, y - 6, x + 18, y + 6], outline=colour, width=3)
        elif shape == "dash":
            draw.line([x + 12, y - 8, x + 12, y - 3], fill=colour, width=2)
            draw.line([x + 12, y + 2, x + 12, y + 7], fill=colour, width=2)
        else:
            draw.line([x + 7, y - 5, x + 17, y + 5], fill=colour, width=2)
            draw.line([x + 7, y + 5, x + 17, y - 5], fill=colour, width=2)
        draw.text((x + 34, y), text, fill=COLOURS["text"], font=fonts["label"], anchor="lm")
    return box


def loss_plot(analysis: dict, out: Path, train_losses: dict[int, float] | None = None,
              title: str = "stable eval loss") -> tuple[int, int]:
    """Draw the plot of a FloorAnalysis dict into out (PNG); return its (width, height)."""
    fonts = {"title": font(18), "label": font(14), "tick": font(13), "heading": font(15)}
    series = read_series(analysis)
    train = sorted((int(e), float(v)) for e, v in (train_losses or {}).items() if finite(v))
    curve = series["raw"] + series["smooth"]
    if not curve:
        image = Image.new("RGB", (WIDTH, 200), COLOURS["background"])
        ImageDraw.Draw(image).text((LEFT, 80), "No finite loss values to plot yet.", fill=COLOURS["text"],
                                   font=fonts["title"])
        out.parent.mkdir(parents=True, exist_ok=True)
        image.save(out, format="PNG")
        return image.size

    epochs = [e for e, _ in curve] + [e for e, _ in series["ignored"]]
    x_low, x_high = min(epochs), max(max(epochs), min(epochs) + 1)
    y_values = [v for _, v in curve]
    if series["noise"] > 0 and finite(series["lowest"]):
        y_values.append(series["lowest"] - BAND_SIGMAS * series["noise"])
    y_low, y_high = value_range(y_values)
    if len(train) > 1:
        # Both on one scale while that keeps the eval curve at half its height or more; else the train
        # loss gets a scale of its own (train_scale).
        both = value_range(y_values + [v for _, v in train])
        if both[1] - both[0] <= SHARED_SPAN * (y_high - y_low):
            y_low, y_high = both
    zoom = zoom_panel_ranges(series, x_low, x_high)
    main_bottom = TITLE_HEIGHT + MAIN_HEIGHT
    probe = train_scale(Panel(LEFT, TITLE_HEIGHT, WIDTH - RIGHT, main_bottom, x_low, x_high, y_low, y_high), train)
    own_axis = probe is not None and (probe.y_low, probe.y_high) != (y_low, y_high)
    right = WIDTH - (RIGHT_AXIS if own_axis else RIGHT)
    height = main_bottom + (GAP + ZOOM_HEIGHT if zoom else 0) + BOTTOM
    image = Image.new("RGB", (WIDTH, height), COLOURS["background"])
    draw = ImageDraw.Draw(image)

    status = series["status_text"]
    draw.text((LEFT, 14), f"Loss per epoch: {title}", fill=COLOURS["text"], font=fonts["title"])
    draw.text((right, 16), status, fill=COLOURS["floor"] if series["floor"] is not None else COLOURS["muted"],
              font=fonts["heading"], anchor="ra")
    draw.text((LEFT - 10, 24), "loss", fill=COLOURS["muted"], font=fonts["tick"], anchor="rm")
    if own_axis:
        draw.text((right + 8, 30), "train", fill=COLOURS["train"], font=fonts["tick"], anchor="lm")

    panels = [(Panel(LEFT, TITLE_HEIGHT, right, main_bottom, x_low, x_high, y_low, y_high), False)]
    if zoom:
        top = main_bottom + GAP
        panels.append((Panel(LEFT, top, right, top + ZOOM_HEIGHT, *zoom), True))
        region = "the floor region" if series["floor"] is not None else "the shortlisted epochs"
        draw.text((LEFT, top - 30), f"Zoom on {region}: epochs {int(zoom[0])} to {int(zoom[1])}",
                  fill=COLOURS["text"], font=fonts["heading"])
    legend = None
    for panel, detailed in panels:
        draw_axes(draw, panel, fonts)
        scale = train_scale(panel, train)
        if detailed and scale is not panel:
            scale = None  # the zoom compares the picks with the noise: a train line off its scale is left out
        draw_lines(image, panel, series, train, scale)
        draw = ImageDraw.Draw(image)
        draw.line([panel.left, panel.top, panel.left, panel.bottom, panel.right, panel.bottom],
                  fill=COLOURS["axis"], width=2)
        if scale is not None and scale is not panel:
            draw_right_axis(draw, scale, fonts)
        if legend is None:  # the legend sits over the curves of the top panel, under its labels
            legend = draw_legend(draw, panel, series, None if scale is None else "shared" if scale is panel
                                 else "right", fonts)
        draw_marks(draw, panel, series, fonts, detailed, avoid=None if detailed else legend)
    draw.text(((LEFT + right) // 2, height - 8), "epoch", fill=COLOURS["muted"], font=fonts["heading"],
              anchor="mb")
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG")
    return image.size
