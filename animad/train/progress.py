"""The loop's state and the run's sizes: the plain records train/loop.py steps and train/ending.py judges.

Progress is saved as is in the resume state, so a resume continues from its very counters.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

from animad.train.optim import Cooldown


def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True)
class Sizes:
    batches_per_epoch: int
    batches_per_step: int  # one optimizer step consumes this many batches of the plan (grad_accum x world)
    steps_per_epoch: int
    max_epochs: int
    max_steps: int | None
    total_steps: int  # what the LR schedule spans


@dataclasses.dataclass
class Progress:
    """Where the run stands: the whole loop state, saved as is in the resume state."""

    epoch: int = 1
    batch_index: int = 0  # the next batch of this epoch's plan
    global_step: int = 0  # optimizer steps so far, over every launch
    loss_sum: float = 0.0  # this epoch's step losses so far, for its average
    loss_count: int = 0
    started: str = dataclasses.field(default_factory=now_iso)  # when the job first started training
    session: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    # The cooldown, once planned (saved, so a resume follows the same LR; train/ending.py plans it): the
    # floor was confirmed after epoch floor_confirmed (None if the cooldown was planned to end at
    # max_epochs instead); epochs cooldown_after + 1 .. cooldown_after + cooldown_epochs cool the LR from
    # cooldown_start_step to 0 over cooldown_steps steps.
    floor_confirmed: int | None = None
    cooldown_after: int | None = None
    cooldown_epochs: int = 0
    cooldown_start_step: int = 0
    cooldown_steps: int = 0
    # Images per forward once an out-of-memory error split the batches (None: the whole batch).
    # Saved: a resumed run on the same card would only run out of memory again.
    micro_batch: int | None = None
    # This epoch's training time so far over every launch (saved, so an epoch resumed mid-way is
    # timed whole: its eval share and its record's seconds stay true).
    epoch_seconds: float = 0.0

    def next_epoch(self) -> None:
        self.epoch, self.batch_index, self.loss_sum, self.loss_count = self.epoch + 1, 0, 0.0, 0
        self.epoch_seconds = 0.0

    def cooldown(self) -> Cooldown | None:
        return Cooldown(self.cooldown_start_step, self.cooldown_steps) if self.cooldown_after is not None else None

    def cooling(self, epoch: int) -> bool:
        """Whether `epoch` is (or was) trained in the cooldown."""
        return self.cooldown_after is not None and epoch > self.cooldown_after


def saved_progress(state: dict) -> Progress:
    """The Progress record inside a resume state (a state from before a field existed gets its default)."""
    return Progress(**{field.name: state[field.name] for field in dataclasses.fields(Progress) if field.name in state})
