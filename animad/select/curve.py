"""Read a per-epoch loss curve from a CSV, an animad epochs.jsonl, or a TensorBoard log dir."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

from animad.errors import UserError

TAG_PREFERENCE = ("eval/loss", "loss/epoch_average")


@dataclasses.dataclass
class Curve:
    epochs: list[int]
    losses: list[float]
    source: str  # "eval" (stable eval loss) or "epoch_average"
    tag: str


def read_curve_file(path: Path, tag: str | None = None) -> Curve:
    path = Path(path)
    if path.is_dir():
        return read_tensorboard(path, tag)
    if not path.is_file():
        raise UserError(f"{path}: no such file or folder")
    if path.suffix == ".jsonl":
        return read_epochs_jsonl(path)
    return read_csv(path)


def _number(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UserError(f"{path}: line {line}, column '{column}': '{text}' is not a number") from None
    return value


def read_csv(path: Path) -> Curve:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fields = [f.strip().lower() for f in (reader.fieldnames or [])]
            if "epoch" not in fields or "loss" not in fields:
                raise UserError(f"{path}: needs a header line with 'epoch' and 'loss' columns "
                                f"(found: {', '.join(reader.fieldnames or []) or 'no header'})")
            rename = {f: f.strip().lower() for f in reader.fieldnames}
            epochs, losses = [], []
            for line, row in enumerate(reader, start=2):
                row = {rename[k]: v for k, v in row.items() if k in rename}
                if not any((v or "").strip() for v in row.values()):
                    continue
                epoch = _number(row["epoch"], path, line, "epoch")
                if epoch != int(epoch):
                    raise UserError(f"{path}: line {line}, column 'epoch': '{row['epoch']}' is not a whole number")
                text = (row["loss"] or "").strip().lower()
                loss = math.nan if text in ("nan", "") else _number(row["loss"], path, line, "loss")
                epochs.append(int(epoch))
                losses.append(loss)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; export the CSV as UTF-8") from None
    except csv.Error as error:
        raise UserError(f"{path}: not a readable CSV ({error})") from None
    if not epochs:
        raise UserError(f"{path}: no rows after the header")
    return Curve(epochs, losses, "csv", "loss")


def read_epochs_jsonl(path: Path) -> Curve:
    from animad.layout import read_epochs_log

    records = read_epochs_log(path)
    if not records:
        raise UserError(f"{path}: no epoch records")
    epochs = [int(r["epoch"]) for r in records]
    if all(r.get("eval_loss") is not None for r in records):
        return Curve(epochs, [float(r["eval_loss"]) for r in records], "eval", "eval_loss")
    return Curve(epochs, [float(r["loss"]) for r in records], "epoch_average", "loss")


def read_tensorboard(directory: Path, tag: str | None = None) -> Curve:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(directory.rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise UserError(f"{directory}: no TensorBoard event files (events.out.tfevents.*) in this folder")
    values: dict[str, dict[int, float]] = {}
    tags_found: set[str] = set()
    for file in files:  # oldest first, so a later launch's value for the same epoch wins
        accumulator = EventAccumulator(str(file), size_guidance={"scalars": 0})
        try:
            accumulator.Reload()
        except Exception as error:  # noqa: BLE001 - a damaged event file is reported, not fatal
            raise UserError(f"{file}: cannot read TensorBoard events ({error})") from None
        for name in accumulator.Tags().get("scalars", []):
            tags_found.add(name)
            for event in accumulator.Scalars(name):
                values.setdefault(name, {})[int(event.step)] = float(event.value)
    wanted = [tag] if tag else list(TAG_PREFERENCE)
    for name in wanted:
        if name in values:
            series = values[name]
            epochs = sorted(series)
            source = "eval" if name.startswith("eval") else "epoch_average"
            return Curve(epochs, [series[e] for e in epochs], source, name)
    raise UserError(f"{directory}: no scalar tag {' or '.join(wanted)}; tags found: "
                    f"{', '.join(sorted(tags_found)) or 'none'}. Pass --tag NAME to pick one.")


def curve_json(curve: Curve) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(curve)))
