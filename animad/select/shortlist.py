"""Shortlist the epochs worth rendering, and say why, from the floor decision (train/floor.py).

The floor itself (cleaning, noise, candidate, confirmation) and the knee are decided in
train/floor.py, the same function stop-at-floor asks during training. Here, on the clean curve:
5. The knee (train/floor.find_knee): the end of the steep descent, read from the drop (90% of it
   behind) and against the noise (the level within the floor's margin of its bottom), the earlier
   of the two; never after the lowest epoch or a confirmed floor. No epoch before it is picked.
6. Shortlist, at most `shortlist_size`, ascending, each with the reason it was picked, at least
   `gap` epochs apart, none before the knee: the exact argmin; the last cooldown epoch (the LR
   annealed to 0) when there was a cooldown; the floor epoch (or the unconfirmed candidate); the
   earliest and then the lowest of the earlier dips within 2 sigma of the lowest loss (the
   one-standard-error rule); then epochs spread evenly between the floor (or the knee) and the
   lowest, each the lowest loss near its even spot. A quiet tail that still falls slowly has no
   earlier dip as good as the lowest, and the spread is what gives the user something to compare.
   Past a confirmed floor (a plateau) every pick is within PLATEAU_SIGMAS of the lowest loss, the
   floor onset included (else it is no pick); an unconfirmed candidate is a pick only within the
   2-sigma band. A run past its knee gets at least MIN_PICKS picks (issue 20: the guide's own kind
   of curve got one).
The epoch to try first is select/try_first.py's; the sentences are select/floor_words.py's.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from animad.select.floor_words import FloorNumbers, account
from animad.select.try_first import choose_try_first, noise_band
from animad.train.floor import DEFAULT_SELECTION, Floor, decide_floor, level_width, sort_curve

# Past a confirmed floor, no pick more than this many noise sigmas above the lowest loss. The issue
# asks for ~3 true sigmas; the estimate itself is off by up to ~30% (bench/floor_accuracy.py), so 2.5.
PLATEAU_SIGMAS = 2.5
MIN_PICKS = 3  # a run past its knee gets at least this many picks (or shortlist_size, if smaller)
KINDS = ("lowest", "annealed", "floor", "candidate", "dip", "tail")  # what a pick can be, in Pick.kind


@dataclasses.dataclass
class Pick:
    epoch: int
    loss: float
    kind: str  # one of KINDS: why the epoch is on the shortlist, in one word
    reason: str  # the same in plain words, shown on the review page


@dataclasses.dataclass
class FloorAnalysis:
    status: str  # "floor", "no_floor_yet", "too_short" or "empty"
    floor_epoch: int | None
    candidate_epoch: int | None
    lowest_epoch: int | None
    shortlist: list[int]
    picks: list[Pick]
    noise: float
    epochs: list[int]  # every epoch given, ascending; the ones left out are in ignored_epochs
    losses: list[float]
    smoothed: list[float]
    ignored_epochs: list[int]
    message: str
    knee_epoch: int | None = None  # the first epoch after the steep descent (no pick before it)
    cooldown_epochs: list[int] = dataclasses.field(default_factory=list)  # epochs trained with the LR annealed
    try_first: dict | None = None  # select/try_first.TryFirst as a dict: the epoch to render first, why, the order
    numbers: dict | None = None  # select/floor_words.FloorNumbers as a dict: what every sentence is written from

    def to_dict(self) -> dict:
        """Given the analysis, return a JSON-ready dict (non-finite losses become None)."""
        out = dataclasses.asdict(self)
        out["losses"] = [value if math.isfinite(value) else None for value in self.losses]
        out["smoothed"] = [value if math.isfinite(value) else None for value in self.smoothed]
        return out


def cooldown_words(floor: Floor, cooldown: list[int]) -> str:
    """Given the pre-cooldown floor decision and the cooldown epochs, return what the cooldown followed."""
    if floor.floor_epoch is not None:
        return f"after the floor at epoch {floor.floor_epoch}"
    before = [int(e) for e in floor.epochs if e < cooldown[0]]  # e.g. a constant LR that reached max_epochs
    return f"after epoch {before[-1]}" if before else "from the start"


class PickList:
    """The picks so far, and the rule every new one obeys: at least `gap` epochs from the others, at most `size`."""

    def __init__(self, size: int, gap: int, lowest_loss: float, band: float, noise: float):
        self.size, self.gap, self.lowest_loss, self.band, self.noise = size, gap, lowest_loss, band, noise
        self.picks: list[Pick] = []

    def fits(self, epoch: int) -> bool:
        return len(self.picks) < self.size and all(abs(epoch - pick.epoch) >= self.gap for pick in self.picks)

    def above(self, loss: float) -> str:
        """Given a loss, return how it compares with the lowest, in words."""
        difference = loss - self.lowest_loss
        sigmas = f", {difference / self.noise:.1f} noise sigmas" if self.noise > 0 else ""
        within = " (within the noise band)" if difference <= self.band else ""
        return f"loss {loss:.5g}, {difference:.3g} above the lowest{sigmas}{within}"

    def add(self, epoch: int, loss: float, kind: str, reason: str, force: bool = False) -> bool:
        if not (force or self.fits(epoch)) or any(pick.epoch == epoch for pick in self.picks):
            return False
        self.picks.append(Pick(epoch, loss, kind, reason))
        return True


def choose_picks(floor: Floor, whole: Floor, size: int, min_epoch: int, knee: int | None,
                 cooldown: list[int]) -> list[Pick]:
    """Given the floor decision, the whole clean curve, the knee and the cooldown epochs, return the picks, ascending.

    floor is decided on the epochs before the cooldown (the anneal is not the floor); whole is the
    clean curve of every epoch, cooldown included, which the picks come from.
    """
    epochs, losses = whole.epochs, whole.losses
    eligible = epochs >= min_epoch
    if size < 1 or not eligible.any():
        return []
    lowest = int(np.argmin(np.where(eligible, losses, np.inf)))  # the first on ties: the earliest epoch
    lowest_epoch, lowest_loss = int(epochs[lowest]), float(losses[lowest])
    start = max(min_epoch, knee if knee is not None else min_epoch)
    after_knee = eligible & (epochs >= start)
    clean_cooldown = [int(e) for e in epochs[eligible] if int(e) in set(cooldown)]
    # The gap is read over the stretch picks can come from (knee to lowest, or to the cooldown's
    # end), not the whole run: an over-trained rise after the lowest holds no pick.
    span = max([lowest_epoch] + clean_cooldown) - start
    picks = PickList(size, max(2, math.ceil(span / (2 * size))), lowest_loss,
                     noise_band(floor.noise, lowest_loss), floor.noise)
    cooled = set(cooldown)
    after = cooldown_words(floor, cooldown) if cooldown else ""

    def add(index: int, kind: str, why: str, force: bool = False) -> bool:
        epoch, loss = int(epochs[index]), float(losses[index])
        if epoch in cooled:  # a cooldown epoch is "annealed" whatever else it is
            step = cooldown.index(epoch) + 1
            last = step == len(cooldown)
            lr = "reached 0 at this epoch" if last else f"cooldown epoch {step} of {len(cooldown)}"
            why = f"{why}; the learning rate was annealed to zero {after} ({lr})"
            kind = "annealed"
        return picks.add(epoch, loss, kind, why, force)

    add(lowest, "lowest", f"lowest loss of the run ({lowest_loss:.5g})", force=True)
    if clean_cooldown:
        last = int(np.searchsorted(epochs, clean_cooldown[-1]))
        add(last, "annealed", f"last cooldown epoch, {picks.above(float(losses[last]))}", force=True)
    earlier = after_knee & (np.arange(len(epochs)) < lowest)  # where the earlier candidates come from
    plateau = losses <= lowest_loss + max(PLATEAU_SIGMAS * floor.noise, picks.band)
    if floor.status == "floor":
        # A plateau: every pick as good as the lowest within the noise. On a run that ended still
        # falling nothing earlier is, and the tail spread (each pick saying how far above) is kept.
        earlier &= plateau
    onset = floor.floor_epoch if floor.floor_epoch is not None else floor.candidate_epoch
    # The floor (or possible floor) is named a pick only where its loss is within the noise of the
    # lowest: "possible floor" beside "6.5 noise sigmas above the lowest" would contradict itself.
    # (A possible floor, unconfirmed, within the noise band itself: floor_words says it "may have levelled off".)
    gate = plateau if floor.floor_epoch is not None else losses <= lowest_loss + picks.band
    if onset is not None and onset in epochs and (earlier & gate)[int(np.searchsorted(epochs, onset))]:
        index = int(np.searchsorted(epochs, onset))
        what = ("floor onset, where progress stopped beyond the noise" if floor.floor_epoch is not None else
                "possible floor (not confirmed): the smoothed loss levels off here")
        add(index, "floor" if floor.floor_epoch is not None else "candidate",
            f"{what}; {picks.above(float(losses[index]))}")
    in_band = earlier & (losses <= lowest_loss + picks.band)
    higher_before = losses <= np.concatenate([[np.inf], losses[:-1]])
    higher_after = losses <= np.concatenate([losses[1:], [np.inf]])
    dips = np.flatnonzero(in_band & higher_before & higher_after)
    if len(dips):
        add(int(dips[0]), "dip", f"earliest dip as good as the lowest within noise (less trained); "
                                  f"{picks.above(float(losses[dips[0]]))}")
    for index in dips[np.argsort(losses[dips], kind="stable")]:
        add(int(index), "dip", f"earlier dip as good as the lowest within noise; {picks.above(float(losses[index]))}")
    spread_tail(picks, epochs, losses, earlier, lowest_epoch, start, add)
    inside = epochs > start  # the knee epoch itself sits on the bend (as in spread_tail)
    if floor.status == "floor":  # a plateau has room for more within the noise: up to the size, spread
        fill_up(picks, epochs, losses, earlier & inside, start, add, picks.size, picks.gap)
    fill_up(picks, epochs, losses, earlier & inside, start, add, MIN_PICKS, 2)
    # Where even that leaves fewer than MIN_PICKS (the lowest an outlier far below every earlier
    # epoch), the tail's next lowest losses, each saying how many sigmas above the lowest it is.
    fill_up(picks, epochs, losses, after_knee & inside & (np.arange(len(epochs)) < lowest), start, add,
            MIN_PICKS, 2, nearest=True)
    return sorted(picks.picks, key=lambda pick: pick.epoch)


def spread_tail(picks: PickList, epochs: np.ndarray, losses: np.ndarray, earlier: np.ndarray, lowest_epoch: int,
                start: int, add) -> None:
    """Fill the free places with epochs spread evenly over the tail before the lowest.

    First between the earliest pick so far before the lowest (the floor, a dip), or else the start
    (the knee, or min_epoch if later), and the lowest; then, if places are left, between the start
    and that earliest pick. The spots are strictly inside each stretch: the knee epoch itself sits
    on the bend, still visibly part of the descent. Each spot takes the lowest loss within a quarter
    of the spacing around it: a local dip, where the noise is on our side.
    """
    picked = [pick.epoch for pick in picks.picks if pick.epoch < lowest_epoch]
    first = min(picked) if picked else start
    for low, high in [(first, lowest_epoch)] + ([(start, first)] if first > start else []):
        count = picks.size - len(picks.picks)
        while count > 0 and (high - low) / (count + 1) < picks.gap:  # spots closer than gap do not fit
            count -= 1
        spacing = (high - low) / (count + 1)
        reach = int(spacing // 4)
        for spot in (low + spacing * (k + 1) for k in range(count)):
            near = np.flatnonzero(earlier & (epochs > low) & (epochs < high) & (np.abs(epochs - spot) <= reach + 0.5))
            for index in sorted(near, key=lambda i: (losses[i], abs(epochs[i] - spot))):
                if add(int(index), "tail", f"spread evenly over the tail from epoch {start} to the lowest; "
                                           f"{picks.above(float(losses[index]))}; less trained"):
                    break


def fill_up(picks: PickList, epochs: np.ndarray, losses: np.ndarray, earlier: np.ndarray, start: int,
            add, wanted: int, gap: int, nearest: bool = False) -> None:
    """Bring a shortlist up to `wanted` picks (never past its size), from the tail epochs still free, `gap` apart.

    The even spread can leave a short or narrow tail with one or two picks (its spots closer than
    the gap, or no epoch near a spot within the band). Each added epoch is the one farthest from
    the picks so far (the lower loss on ties): spread, as the guide's "several earlier checkpoints";
    with `nearest`, the one of lowest loss.
    """
    wanted = min(wanted, picks.size)
    candidates = [int(i) for i in np.flatnonzero(earlier)]
    while len(picks.picks) < wanted:
        taken = [pick.epoch for pick in picks.picks]
        free = [i for i in candidates if all(abs(int(epochs[i]) - e) >= gap for e in taken)]
        if not free:
            return
        if nearest:  # the lowest loss first: as near the lowest as the tail has
            best = min(free, key=lambda i: losses[i])
        else:
            best = max(free, key=lambda i: (min(abs(int(epochs[i]) - e) for e in taken), -losses[i]))
        if not add(best, "tail", f"spread over the tail from epoch {start} to the lowest; "
                                 f"{picks.above(float(losses[best]))}; less trained", force=True):
            return


def describe_floor(floor: Floor, picks: list[Pick], numbers: FloorNumbers, min_epoch: int, knee: int | None = None,
                   cooldown: list[int] = ()) -> str:
    """Given the floor decision, the picks, its numbers, the knee and the cooldown epochs, return a one-paragraph
    explanation (its first sentences are floor_words.account's, from the same numbers)."""
    epochs = floor.epochs
    text = account(numbers, min_epoch, len(floor.epochs))
    if cooldown:
        text += (f" Then the learning rate was annealed to zero over {len(cooldown)} cooldown epochs "
                 f"({cooldown[0]} to {cooldown[-1]}); the floor is read from the epochs before them.")
    if floor.ignored:
        text += " Left out: " + "; ".join(f"epoch {e} ({why})" for e, why in sorted(floor.ignored.items())) + "."
    if picks:
        text += f" Shortlisted epochs: {', '.join(str(pick.epoch) for pick in picks)}"
        if knee is not None and len(epochs) and knee > int(epochs[0]):
            text += f", all after the steep descent, which ends at epoch {knee}"
        text += "."
        if floor.status != "floor":
            text += " If the run has ended, it ended before a floor; the shortlist is still worth a look."
        text += " Low loss only shortlists: the previews decide."
    return text


def floor_numbers(floor: Floor, whole: Floor, picks: list[Pick], patience: int, min_epoch: int,
                  knee: int | None) -> FloorNumbers:
    """Given the floor decision (before any cooldown), the whole clean curve, the picks and the knee, return the
    numbers every sentence about the floor is written from."""
    def loss_at(epoch):
        found = np.flatnonzero(whole.epochs == epoch) if epoch is not None else []
        return float(whole.losses[found[0]]) if len(found) else None

    eligible = whole.epochs >= min_epoch
    lowest = int(whole.epochs[int(np.argmin(np.where(eligible, whole.losses, np.inf)))]) if eligible.any() else None
    onset = floor.floor_epoch if floor.floor_epoch is not None else floor.candidate_epoch
    lowest_loss = loss_at(lowest)
    return FloorNumbers(
        status=floor.status, floor_epoch=floor.floor_epoch, candidate_epoch=floor.candidate_epoch, knee_epoch=knee,
        first_epoch=int(floor.epochs[0]) if len(floor.epochs) else None,
        last_epoch=int(floor.epochs[-1]) if len(floor.epochs) else None, lowest_epoch=lowest,
        lowest_loss=lowest_loss, candidate_loss=loss_at(onset), knee_loss=loss_at(knee), noise=float(floor.noise),
        margin=float(floor.margin), band=noise_band(floor.noise, lowest_loss or 0.0), patience=patience,
        trend_from=floor.trend_from, trend_drop=floor.trend_drop, trend_allowed=floor.trend_allowed)


def analyze_curve(epochs, losses, *, patience: int = DEFAULT_SELECTION.patience,
                  shortlist_size: int = DEFAULT_SELECTION.shortlist_size, min_epoch: int = DEFAULT_SELECTION.min_epoch,
                  cooldown_epochs=frozenset()) -> FloorAnalysis:
    """Given a per-epoch loss curve, return the floor analysis, the shortlist and a message.

    cooldown_epochs are the epochs trained after the floor with the learning rate annealed to zero
    (their epochs.jsonl records say "cooldown": true). The floor is decided without them, since the
    anneal's last drop is not progress the floor rule should wait for; they are shortlisted like
    any other epoch, as "annealed", and the last of them always.
    """
    cooled = {int(e) for e in cooldown_epochs}
    all_epochs, all_losses = sort_curve(epochs, losses)
    before = ~np.isin(all_epochs, sorted(cooled))
    floor = decide_floor(all_epochs[before], all_losses[before], patience=patience, min_epoch=min_epoch)
    whole = decide_floor(all_epochs, all_losses, patience=patience, min_epoch=min_epoch) if cooled else floor
    cooldown = [int(e) for e in all_epochs if int(e) in cooled]
    knee = floor.knee
    if knee is None and len(whole.epochs):  # nothing before the cooldown: no descent to stay off
        knee = int(whole.epochs[0])
    eligible = whole.epochs >= min_epoch
    if knee is not None and eligible.any():  # the lowest epoch is never on the descent
        knee = min(knee, int(whole.epochs[int(np.argmin(np.where(eligible, whole.losses, np.inf)))]))
    if knee is not None and floor.floor_epoch is not None:  # nor is a confirmed floor: progress stopped there
        knee = min(knee, floor.floor_epoch)
    picks = choose_picks(floor, whole, shortlist_size, min_epoch, knee, cooldown)
    lowest = None
    if picks:
        eligible = whole.epochs >= min_epoch
        lowest = int(whole.epochs[int(np.argmin(np.where(eligible, whole.losses, np.inf)))])
    smoothed = np.full(len(all_epochs), math.nan)
    if len(whole.epochs):
        smoothed = np.interp(all_epochs, whole.epochs, whole.level)  # left-out epochs get the level around them
        # The running mean's window is cut short at the start, where the curve falls fastest: there
        # it would be drawn well below the curve it smooths. Show it only where its window is whole.
        half = level_width(len(whole.epochs)) // 2
        if len(whole.epochs) > 2 * half:
            smoothed[all_epochs < whole.epochs[half]] = math.nan
    ignored = {**floor.ignored, **whole.ignored}
    first = choose_try_first([dataclasses.asdict(pick) for pick in picks], floor.noise)
    numbers = floor_numbers(floor, whole, picks, patience, min_epoch, knee)
    return FloorAnalysis(
        status=floor.status, floor_epoch=floor.floor_epoch, candidate_epoch=floor.candidate_epoch,
        lowest_epoch=lowest, shortlist=[p.epoch for p in picks], picks=picks, noise=floor.noise,
        epochs=[int(e) for e in all_epochs], losses=[float(v) for v in all_losses],
        smoothed=[float(v) for v in smoothed], ignored_epochs=sorted(ignored),
        message=describe_floor(dataclasses.replace(floor, ignored=ignored), picks, numbers, min_epoch, knee, cooldown),
        knee_epoch=knee, cooldown_epochs=cooldown, try_first=first.to_dict() if first else None,
        numbers=numbers.to_dict())
