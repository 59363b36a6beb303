"""A job's progress report: what its process says it is doing, and the one reader of it.

The training loop and selection send partial reports (their phase and what changed: `Report(...).sent()`);
daemon/progress.PhaseClock merges them into the job's queue row, adding when the phase began, an ETA for
counted phases and the eval/save time per epoch; `animad train` shows them live. Whoever reads one
(daemon/progress.py for `status`, cli/local.py's bar, the dashboard's job view) goes through
`Report.read`, the one place that knows what older rows lack.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Report:
    phase: str | None = None  # loading, caching, training, eval, saving, selecting, previews, waiting
    # caching and previews: a count
    done: int | None = None
    total: int | None = None
    # training, eval, saving: where the loop stands
    epoch: int | None = None
    max_epochs: int | None = None
    step: int | None = None
    total_steps: int | None = None
    step_in_epoch: int | None = None
    steps_per_epoch: int | None = None
    loss: float | None = None  # this epoch's mean step loss so far
    s_per_it: float | None = None
    eta_seconds: float | None = None  # to end_step at s_per_it (a counted phase: to its last item)
    # where the run is headed (train/ending.outlook)
    floor: str | None = None  # "off", "not yet", "confirmed at epoch N"
    cooling: bool | None = None
    cooldown_epochs_left: int | None = None
    end_epoch: int | None = None
    end_step: int | None = None
    eta_until: str | None = None  # what the ETA is the time to, in words
    micro_batch: int | None = None  # images per forward after an out-of-memory split
    # a chained job waiting for its source (daemon/chain.py)
    waiting_for: str | None = None
    waiting: str | None = None
    # added by daemon/progress.PhaseClock
    phase_since: float | None = None
    epoch_overhead_seconds: float | None = None
    pid: int | None = None

    def sent(self) -> dict:
        """The report as it travels: the fields set (a partial report leaves the others as they were)."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}

    @classmethod
    def read(cls, report: dict | None) -> Report:
        """The one reader of a report (a row's merged dict, or one the loop just sent).

        Rows from before the cooldown existed lack end_epoch and end_step: the run then ended at
        max_epochs and total_steps. Keys it does not know are ignored.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        fields = {key: value for key, value in (report or {}).items() if key in known}
        fields.setdefault("end_epoch", fields.get("max_epochs"))
        fields.setdefault("end_step", fields.get("total_steps"))
        return cls(**fields)
