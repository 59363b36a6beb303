"""The sentences about the floor, written from the numbers the floor decision used, and nothing else.

`FloorNumbers` is what train/floor.decide_floor and the shortlist decided (status, floor, knee, the
trend line's window, drop and allowance, the lowest loss, the noise band). The page's verdict, the
plot's status line and the detector's own account are functions of it, so no sentence can say
"flat within the noise" beside a gap of many sigmas, or "no confirmed floor yet" where the text
says the run ended still falling. It is a plain record (summary.json's analysis.numbers), so it
can later be fed from the run's ending record as well.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass
class FloorNumbers:
    status: str  # "floor", "no_floor_yet", "too_short" or "empty"
    floor_epoch: int | None
    candidate_epoch: int | None
    knee_epoch: int | None  # the first epoch after the steep descent
    first_epoch: int | None
    last_epoch: int | None  # the last epoch the floor was read from (before any cooldown)
    lowest_epoch: int | None
    lowest_loss: float | None
    candidate_loss: float | None  # the loss at the candidate (or floor) epoch
    knee_loss: float | None
    noise: float
    margin: float
    band: float  # "within the noise of the lowest": less than this above the lowest loss
    patience: int
    trend_from: int | None = None  # the trend line's first epoch (its last is last_epoch), when measured
    trend_drop: float | None = None  # how far that line falls
    trend_allowed: float | None = None  # how far it may fall and still count as flat

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict | None) -> FloorNumbers | None:
        if not isinstance(data, dict):
            return None
        names = {field.name for field in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError:  # an older or damaged summary: the caller falls back
            return None

    def candidate_in_band(self) -> bool:
        """Whether the possible floor's own loss is within the noise of the lowest (else it is no floor at all)."""
        return (self.candidate_loss is not None and self.lowest_loss is not None
                and self.candidate_loss - self.lowest_loss <= self.band)

    def fell_since_knee(self) -> float | None:
        if self.knee_loss is None or self.lowest_loss is None or self.knee_epoch == self.lowest_epoch:
            return None
        return self.knee_loss - self.lowest_loss


def verdict(numbers: FloorNumbers) -> str:
    """The floor's verdict in plain words (the page's banner), from the decision's numbers."""
    lowest, last = numbers.lowest_epoch, numbers.last_epoch
    if numbers.status == "floor":
        return (f"The loss stopped improving around epoch {numbers.floor_epoch}: the epochs after it are no better "
                f"beyond chance. The lowest loss was at epoch {lowest}.")
    if numbers.status == "no_floor_yet" and numbers.candidate_epoch is not None and numbers.candidate_in_band():
        return (f"The loss may have levelled off around epoch {numbers.candidate_epoch} (its loss there is within "
                f"the noise of the lowest), but training ended before that could be confirmed. The lowest loss was "
                f"at epoch {lowest}.")
    if numbers.status == "no_floor_yet":
        fell = numbers.fell_since_knee()
        if fell is not None and fell > 0:
            return (f"The loss was still going down when training ended: after the steep descent (to epoch "
                    f"{numbers.knee_epoch}) it fell {fell:.3g} more, to its lowest at epoch {lowest} of {last}. "
                    "More epochs may still help.")
        return (f"The loss was still going down when training ended (lowest at epoch {lowest} of {last}): "
                "more epochs may still help.")
    if numbers.status == "too_short":
        return "Too few epochs to tell where the loss stops improving."
    return "No loss was recorded, so there is nothing to judge yet."


def plot_status(numbers: FloorNumbers) -> str:
    """The loss plot's status line: the same verdict, in a few words."""
    if numbers.status == "floor":
        return f"floor confirmed at epoch {numbers.floor_epoch}"
    if numbers.status == "no_floor_yet" and numbers.candidate_epoch is not None and numbers.candidate_in_band():
        return f"possible floor at epoch {numbers.candidate_epoch}, not confirmed"
    if numbers.status == "no_floor_yet":
        return "no floor: still falling at the end"
    return {"too_short": "too few epochs to find a floor"}.get(numbers.status, "")


def account(numbers: FloorNumbers, min_epoch: int, count: int) -> str:
    """The detector's own account of its decision, with its numbers (the first sentences of the message).

    count is how many usable epochs the curve had; min_epoch the first epoch a floor may be.
    """
    noise = f"noise sigma {numbers.noise:.3g}, so changes under {numbers.margin:.3g} do not count"
    last, patience, candidate = numbers.last_epoch, numbers.patience, numbers.candidate_epoch
    if numbers.status == "empty":
        return "No finite loss values: nothing to analyse."
    if numbers.status == "too_short" and count >= 5:
        return f"No usable epoch at or after min_epoch {min_epoch} yet (the last is {last})."
    if numbers.status == "too_short":
        return f"Only {count} usable epochs: too few to tell a floor from noise."
    if numbers.status == "floor":
        trend = ""
        if numbers.trend_drop is not None and numbers.trend_allowed is not None:
            trend = (f"; the trend line over epochs {numbers.trend_from}-{last} moves by {-numbers.trend_drop:+.3g}, "
                     f"within the {numbers.trend_allowed:.3g} the noise allows")
        return (f"The loss stopped improving beyond its noise at epoch {numbers.floor_epoch} ({noise}); the "
                f"{last - numbers.floor_epoch} epochs after it confirm the floor (patience {patience}){trend}.")
    if candidate is None or last - candidate < patience / 2:
        return f"The loss is still falling at the last epoch, {last} ({noise}): no floor yet."
    if numbers.trend_drop is not None:
        where = (f" (none before epoch {numbers.knee_epoch}, where the steep descent ends)"
                 if numbers.knee_epoch is not None else "")
        return (f"The smoothed loss levels off from epoch {candidate}, but its trend line over epochs "
                f"{numbers.trend_from}-{last}{where} still falls by {numbers.trend_drop:.3g}, more than the "
                f"{numbers.trend_allowed:.3g} noise explains ({noise}): no floor yet.")
    if last - candidate < patience:
        return (f"Possible floor at epoch {candidate}, but only {last - candidate} of the {patience} epochs of "
                f"patience have passed ({noise}): no floor yet.")
    if numbers.knee_epoch is not None and last - 2 * patience < numbers.knee_epoch:
        return (f"Possible floor at epoch {candidate}, but the steep descent ended at epoch {numbers.knee_epoch}, and "
                f"the trend line that confirms a floor needs {2 * patience} epochs (twice the patience) after it; "
                f"there are {last - numbers.knee_epoch}: no floor yet.")
    return (f"Possible floor at epoch {candidate}, but confirming it takes a curve of {2 * patience} epochs (twice "
            f"the patience) and this one spans {last - (numbers.first_epoch or last)}: no floor yet.")
