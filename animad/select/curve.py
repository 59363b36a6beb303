"""Read a per-epoch loss curve from a CSV, an animad epochs.jsonl, or a TensorBoard log folder.

Every reader returns epochs in ascending order, one value each; where an epoch was logged twice
(a resumed run), the value written last wins. Problems raise UserError naming the file and the fix.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

from animad.errors import UserError
from animad.layout import read_epochs_log
from animad.train.floor import CURVE_SOURCES, cooldown_epochs, epoch_curve

TAG_PREFERENCE = ("eval/loss", "loss/epoch_average")  # the stable eval curve first, then the epoch mean
EVENT_FILE_PREFIX = "events.out.tfevents."


@dataclasses.dataclass
class Curve:
    epochs: list[int]
    losses: list[float]
    source: str  # "eval" (stable eval loss), "epoch_average" (mean train loss); "csv"/"tensorboard": unknown
    tag: str  # the column, key or scalar tag read
    cooldown: frozenset[int] = frozenset()  # epochs.jsonl only: epochs trained in the cooldown after the floor


def read_curve_file(path: Path, tag: str | None = None) -> Curve:
    """Given a CSV, an epochs.jsonl, a TensorBoard event file or log folder, return its curve."""
    path = Path(path)
    if path.is_dir() or path.name.startswith(EVENT_FILE_PREFIX):
        return read_tensorboard(path, tag)
    if not path.is_file():
        raise UserError(f"{path}: no such file or folder; give a CSV (epoch,loss, or TensorBoard's CSV export), "
                        "an epochs.jsonl or a TensorBoard log folder")
    if path.suffix == ".jsonl":
        return read_epochs_jsonl(path)
    return read_csv(path)


def order_by_epoch(values: dict[int, float]) -> tuple[list[int], list[float]]:
    """Given epoch -> loss, return the epochs ascending and their losses."""
    epochs = sorted(values)
    return epochs, [values[epoch] for epoch in epochs]


def parse_number(text: str | None, path: Path, line: int, column: str) -> float:
    """Given a CSV cell, return it as a float (empty or 'nan' is NaN); raise UserError naming file, line and column."""
    text = (text or "").strip()
    if text == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{path}: line {line}, column '{column}': '{text}' is not a number; "
                        "fix or delete that row") from None


# TensorBoard's "Download data: CSV" writes these columns. animad logs its epoch scalars (eval/loss,
# loss/epoch_average) with the epoch as the step, so Step is read as the epoch.
TENSORBOARD_CSV = ("wall time", "step", "value")


def csv_columns(path: Path, header: list[str]) -> tuple[str, str, str | None]:
    """Given a CSV header (lower case), return its epoch column, loss column and wall-time column (or None).

    Either animad's own `epoch,loss` or TensorBoard's export `Wall time,Step,Value`.
    """
    if "epoch" in header and "loss" in header:
        return "epoch", "loss", None
    if all(name in header for name in TENSORBOARD_CSV[1:]):
        return "step", "value", "wall time" if "wall time" in header else None
    raise UserError(f"{path}: the first line must be a header with 'epoch' and 'loss' columns, or TensorBoard's "
                    f"CSV export header 'Wall time,Step,Value' (found: {', '.join(header) or 'an empty line'})")


def read_csv(path: Path) -> Curve:
    """Given a CSV with a header naming 'epoch' and 'loss' columns (others ignored), or a TensorBoard CSV
    export (Wall time, Step, Value: the step is the epoch), return its curve."""
    values: dict[int, float] = {}
    written: dict[int, float] = {}  # epoch -> wall time of the value kept (TensorBoard exports)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [name.strip().lower() for name in next(reader, [])]
            epoch_name, loss_name, time_name = csv_columns(path, header)
            epoch_column, loss_column = header.index(epoch_name), header.index(loss_name)
            time_column = header.index(time_name) if time_name else None
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) <= max(epoch_column, loss_column, time_column or 0):
                    raise UserError(f"{path}: line {line} has {len(row)} fields, fewer than the header's "
                                    f"{len(header)}; fix or delete that row")
                epoch = parse_number(row[epoch_column], path, line, epoch_name)
                if not math.isfinite(epoch) or epoch != int(epoch):
                    raise UserError(f"{path}: line {line}, column '{epoch_name}': '{row[epoch_column].strip()}' is "
                                    "not a whole number")
                loss = parse_number(row[loss_column], path, line, loss_name)
                if time_column is not None:
                    # A resumed run logs an epoch again: as in the event files, the later write wins.
                    wall = parse_number(row[time_column], path, line, time_name)
                    if int(epoch) in written and wall < written[int(epoch)]:
                        continue
                    written[int(epoch)] = wall
                values[int(epoch)] = loss
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; export the CSV as UTF-8") from None
    except csv.Error as error:
        raise UserError(f"{path}: not a readable CSV ({error})") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read it ({error.strerror})") from None
    if not values:
        raise UserError(f"{path}: no data rows after the header")
    if epoch_name == "step":
        return Curve(*order_by_epoch(values), "tensorboard", "Value (TensorBoard CSV export, Step as the epoch)")
    return Curve(*order_by_epoch(values), "csv", "loss")


def read_epochs_jsonl(path: Path) -> Curve:
    """Given an animad epochs.jsonl, return the curve the floor is read from (train/floor.epoch_curve's rule)."""
    records = read_epochs_log(path)
    if not records:
        raise UserError(f"{path}: no epoch records yet")
    epochs, losses, key = epoch_curve(records)
    return Curve(*order_by_epoch(dict(zip(epochs, losses))), CURVE_SOURCES[key], key,
                 frozenset(cooldown_epochs(records)))


def find_event_files(path: Path) -> list[Path]:
    """Given an event file or a log folder, return the TensorBoard event files in it (searched recursively)."""
    if path.is_file():
        return [path]
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    files = sorted(p for p in path.rglob(EVENT_FILE_PREFIX + "*") if p.is_file())
    if not files:
        raise UserError(f"{path}: no TensorBoard event files ({EVENT_FILE_PREFIX}*) in this folder or below it; "
                        "point at the run's log folder")
    return files


def read_scalars(files: list[Path]) -> dict[str, dict[int, tuple[float, float]]]:
    """Given event files, return tag -> step -> (wall time, value), keeping the last-written value of each step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, dict[int, tuple[float, float]]] = {}
    for file in files:
        accumulator = EventAccumulator(str(file), size_guidance={"scalars": 0})
        try:
            accumulator.Reload()
        except Exception as error:  # noqa: BLE001 - any damage inside the file is reported, not a traceback
            raise UserError(f"{file}: cannot read TensorBoard events ({error}); move the file aside") from None
        for tag in accumulator.Tags().get("scalars", []):
            steps = scalars.setdefault(tag, {})
            for event in accumulator.Scalars(tag):
                # Wall time, not file order, decides between launches that logged the same epoch.
                if int(event.step) not in steps or event.wall_time >= steps[int(event.step)][0]:
                    steps[int(event.step)] = (float(event.wall_time), float(event.value))
    return scalars


def describe_tag(tag: str) -> str:
    """Given a scalar tag, return which signal it is: "eval", "epoch_average" or "tensorboard" (another tag)."""
    if tag.startswith("eval/"):
        return "eval"
    return "epoch_average" if tag == "loss/epoch_average" else "tensorboard"


def read_tensorboard(path: Path, tag: str | None = None) -> Curve:
    """Given a TensorBoard log folder (or event file), return the curve of `tag`, else of eval/loss,
    else of loss/epoch_average. The step of each point is its epoch number.
    """
    scalars = read_scalars(find_event_files(path))
    wanted = [tag] if tag else list(TAG_PREFERENCE)
    for name in wanted:
        if scalars.get(name):
            epochs, losses = order_by_epoch({step: value for step, (_, value) in scalars[name].items()})
            return Curve(epochs, losses, describe_tag(name), name)
    raise UserError(f"{path}: no scalar tag {' or '.join(wanted)}; tags found: "
                    f"{', '.join(sorted(scalars)) or 'none'}. Pass --tag NAME to pick one.")
