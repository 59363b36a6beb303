"""Where training reports to: TensorBoard (for people) and epochs.jsonl (for select/)."""

from __future__ import annotations

import json
from pathlib import Path

from animad.fsutil import write_atomic
from animad.layout import EpochRecord, read_epochs_log


class Tracker:
    """One TensorBoard run per job (not per launch), so a resumed run is one continuous curve.

    `records` is what epochs.jsonl holds, read once here and appended per epoch: the loop asks the
    floor about it without reading the file again.
    """

    def __init__(self, tb_dir: Path, epochs_log: Path, resume_step: int, resume_epoch: int):
        from torch.utils.tensorboard import SummaryWriter

        self.epochs_log = Path(epochs_log)
        # Steps logged after the last saved state were lost with the kill and will be replayed: hide them.
        self.writer = SummaryWriter(str(tb_dir), purge_step=resume_step if resume_step else None)
        self.truncate_epochs(resume_epoch)

    def truncate_epochs(self, keep_through: int) -> None:
        """Drop epoch records newer than the resume state, so a replayed epoch is never listed twice,
        and a torn last line, so the next record starts on a line of its own."""
        records = read_epochs_log(self.epochs_log)
        self.records = [r for r in records if r["epoch"] <= keep_through]
        kept = "".join(json.dumps(r) + "\n" for r in self.records)
        current = self.epochs_log.read_text() if self.epochs_log.is_file() else ""
        if kept != current:  # usually equal: nothing to write
            write_atomic(self.epochs_log, kept.encode())

    def step(self, step: int, loss: float, lr: float, d_lr: float) -> None:
        self.writer.add_scalar("loss/current", loss, step)
        self.writer.add_scalar("lr/unet", lr, step)
        self.writer.add_scalar("lr/d*lr", d_lr, step)

    def max_norm(self, step: int, scaled: int, mean: float, largest: float) -> None:
        """network.scale_weight_norms' step figures, under sd-scripts' TensorBoard names."""
        self.writer.add_scalar("max_norm/keys_scaled", scaled, step)
        self.writer.add_scalar("max_norm/max_key_norm", largest, step)
        self.writer.add_scalar("norm/avg_key_norm", mean, step)

    def epoch(self, record: EpochRecord) -> None:
        """The one writer of epochs.jsonl: its record appended as one line."""
        epoch = record.epoch
        self.writer.add_scalar("loss/epoch_average", record.loss, epoch)
        if record.eval_loss is not None:
            self.writer.add_scalar("eval/loss", record.eval_loss, epoch)
            for sigma, value in record.eval_by_sigma.items():
                self.writer.add_scalar(f"eval/sigma_{sigma}", value, epoch)
        self.writer.flush()
        row = record.to_dict()
        try:  # a torn last line (full disk, kill) is skipped by readers and cut off on resume
            with open(self.epochs_log, "a") as handle:
                handle.write(json.dumps(row) + "\n")
        except OSError as error:
            raise OSError(error.errno, error.strerror, str(self.epochs_log)) from error
        self.records.append(row)

    def close(self) -> None:
        self.writer.close()
