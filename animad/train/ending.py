"""When the run ends, and why: the one owner of the run's end.

A run ends at a limit (max_epochs, max_steps) or, with selection.stop_at_floor, at the loss floor
train/floor.py confirms. A floor (or, for a schedule that never decays by itself, the end coming near)
first starts a cooldown: the LR goes linearly to 0 over a few more epochs, then the run ends. A finished
run trains on when a limit was raised since (reopen_finished), with its cooldown planned again for the
new end (resume_schedule). Along the way this module says where the run is headed (outlook: the ETA's
target, for `status`) and what schedule an epoch file followed (followed_schedule, its metadata).

Its verdict is an Ending record (animad/layout.py), written through JobPaths: select/, daemon/ and the
page read the record; the sentence in it is for people.

Every rank runs these functions on the same shared facts, so every rank plans the same cooldown.
"""

from __future__ import annotations

import dataclasses
import logging
import math

from animad.config.job import JobConfig
from animad.layout import Ending, JobPaths
from animad.train.checkpoint import FollowedSchedule
from animad.train.optim import follow_cooldown, schedule_kind, warmup_steps
from animad.train.progress import Progress, Sizes, saved_progress

log = logging.getLogger("animad.train")


def watching_floor(progress: Progress, config: JobConfig) -> bool:
    """Whether this epoch's end asks for the floor: stop_at_floor is on and no cooldown fixed the end yet."""
    return config.selection.stop_at_floor and progress.cooldown_after is None


def verdict(progress: Progress, sizes: Sizes) -> Ending | None:
    """How the run ends at this point, or None while there is an epoch left to train.

    An epoch under way (batch_index > 0) is always finished first: its eval and file are still due.
    """
    trained = progress.epoch - 1
    cooldown = progress.cooldown_epochs if progress.cooldown_after is not None else 0
    cooled = progress.cooldown_after is not None and progress.epoch > progress.cooldown_after + \
        progress.cooldown_epochs
    if cooled and progress.floor_confirmed is not None:
        return Ending(kind="floor", epochs=trained, floor_epoch=progress.floor_confirmed, cooldown_epochs=cooldown,
                      sentence=f"stopped at the confirmed loss floor after epoch {progress.floor_confirmed}, then "
                               f"cooled the learning rate to 0 over {progress.cooldown_epochs} epochs")
    limit = limit_reached(progress, sizes.max_epochs, sizes.max_steps)
    if limit is None:
        return None
    kind, sentence = limit
    return Ending(kind=kind, epochs=trained, floor_epoch=progress.floor_confirmed, cooldown_epochs=cooldown,
                  sentence=sentence)


def limit_reached(progress: Progress, max_epochs: int, max_steps: int | None) -> tuple[str, str] | None:
    """(which limit, the sentence) when max_epochs or max_steps ends the run at this point, or None."""
    trained = progress.epoch - 1
    if progress.epoch > max_epochs:
        if trained > max_epochs:  # lowered under a run that had gone further: nothing is undone
            return "max_epochs", (f"reached max_epochs {max_epochs} (lowered after {trained} epochs were trained; "
                                  "every one of them stays)")
        return "max_epochs", f"reached max_epochs {max_epochs}"
    if max_steps and progress.global_step >= max_steps and progress.batch_index == 0:
        return "max_steps", f"reached max_steps {max_steps}"
    return None


def out_of_steps(progress: Progress, sizes: Sizes) -> bool:
    """max_steps is spent: the epoch under way stops short (and is then evaluated and saved)."""
    return bool(sizes.max_steps) and progress.global_step >= sizes.max_steps


def last_epoch(progress: Progress, sizes: Sizes) -> int:
    """The last epoch this run will train, as far as is known now."""
    if progress.cooldown_after is not None:
        return min(sizes.max_epochs, progress.cooldown_after + progress.cooldown_epochs)
    return sizes.max_epochs


@dataclasses.dataclass(frozen=True)
class CooldownPlan:
    after: int  # the last epoch before the cooldown
    epochs: int
    start_step: int
    steps: int


def plan_cooldown(progress: Progress, sizes: Sizes, config: JobConfig, after: int) -> CooldownPlan | None:
    """The cooldown due after epoch `after`, or None (nothing is changed here).

    A cooldown is due when the floor is confirmed, or, for a schedule that never decays by itself
    (constant), when the cooldown would reach the end of the run anyway: a run that finds no floor
    then still ends annealed. It needs steps left to cool over.
    """
    selection = config.selection
    wanted = max(selection.cooldown_min_epochs, round(selection.cooldown_fraction * after)) \
        if selection.cooldown_fraction > 0 else 0
    steps_left = sizes.total_steps - progress.global_step
    steps = min(wanted * sizes.steps_per_epoch, steps_left)
    floor = progress.floor_confirmed is not None
    constant = schedule_kind(config.schedule, selection) == "constant"
    end_is_near = constant and wanted > 0 and steps_left <= wanted * sizes.steps_per_epoch
    if steps <= 0 or not (floor or end_is_near):
        return None
    return CooldownPlan(after=after, epochs=math.ceil(steps / sizes.steps_per_epoch),
                        start_step=progress.global_step, steps=steps)


def start_cooldown(progress: Progress, plan: CooldownPlan, sizes: Sizes, config: JobConfig, scheduler) -> None:
    """From now on the LR cools to 0 as planned (the plan is saved in the progress, the scheduler follows it)."""
    progress.cooldown_after, progress.cooldown_epochs = plan.after, plan.epochs
    progress.cooldown_start_step, progress.cooldown_steps = plan.start_step, plan.steps
    follow_cooldown(scheduler, config.schedule, config.selection, sizes.total_steps, progress.cooldown())
    log.info("%s after epoch %d: cooling the learning rate from %.3g to 0 over %d epochs (%d steps)",
             "loss floor confirmed" if progress.floor_confirmed is not None else
             "no floor yet, the end of the run is near", plan.after, scheduler.get_last_lr()[0], plan.epochs,
             plan.steps)


def after_floor_check(progress: Progress, sizes: Sizes, config: JobConfig, scheduler) -> Ending | None:
    """After an epoch that asked for the floor: start the cooldown if one is due; a confirmed floor with no
    steps left to cool over ends the run now, as without a cooldown."""
    plan = plan_cooldown(progress, sizes, config, after=progress.epoch)
    if plan is not None:
        start_cooldown(progress, plan, sizes, config, scheduler)
        return None
    if progress.floor_confirmed is None:
        return None
    return Ending(kind="floor", epochs=progress.epoch, floor_epoch=progress.floor_confirmed, cooldown_epochs=0,
                  sentence=f"stopped at the confirmed loss floor after epoch {progress.epoch}")


def reopen_finished(paths: JobPaths, config: JobConfig, state: dict) -> tuple[bool, str]:
    """Whether a finished run trains on under the job's limits as they are now, and the sentence saying so.

    A run that stopped at its confirmed floor is finished for that reason while stop_at_floor is on;
    one that reached its max_epochs or max_steps trains on once that limit is raised. A lowered limit
    deletes nothing.
    """
    progress = saved_progress(state)
    trained, schedule, selection = progress.epoch - 1, config.schedule, config.selection
    done = f"training already finished at epoch {trained}"
    if progress.floor_confirmed is not None and selection.stop_at_floor:
        return False, (f"{done}: it stopped at the loss floor confirmed after epoch {progress.floor_confirmed}, so a "
                       "higher max_epochs does not reopen it. To train past the floor, set selection.stop_at_floor: "
                       "false in job.yaml and run again; it continues from its last state.")
    limit = limit_reached(progress, schedule.max_epochs, schedule.max_steps)
    if limit is None:
        kind = schedule_kind(schedule, selection)
        plan = (f"{kind} to the end of max_steps {schedule.max_steps}" if schedule.max_steps
                else f"{kind} over {schedule.max_epochs} epochs")
        if kind == "constant" and selection.stop_at_floor:
            plan += ", cooled to 0 at a confirmed floor or over the last epochs"
        limits = f"max_epochs {schedule.max_epochs}" + (f", max_steps {schedule.max_steps}" if schedule.max_steps
                                                        else "")
        return True, (f"training had finished at epoch {trained}; its limit is now higher ({limits}): training on "
                      f"from epoch {progress.epoch} (step {progress.global_step}) with the learning-rate schedule "
                      f"re-planned: {plan}. The epochs already trained stay as they are.")
    if trained > schedule.max_epochs or (schedule.max_steps and progress.global_step > schedule.max_steps):
        lowered = (f"max_epochs {schedule.max_epochs}" if trained > schedule.max_epochs
                   else f"max_steps {schedule.max_steps}")
        return False, (f"{done} (step {progress.global_step}); {lowered} is now below what was trained. Nothing is "
                       f"deleted: every epoch file stays in {paths.epochs_dir} and the review still weighs all "
                       f"{trained} epochs. Raise the limit above what was trained to train on.")
    which, sentence = limit
    what = f"max_steps above {progress.global_step}" if which == "max_steps" else f"max_epochs above {trained}"
    return False, (f"{done} ({sentence}). To train on from its last state, raise schedule.{what} in job.yaml and "
                   "run again.")


def resume_schedule(progress: Progress, sizes: Sizes, config: JobConfig, scheduler, reopened: bool) -> None:
    """After a resume: the scheduler follows the saved cooldown (LambdaLR's state does not keep its function);
    a cooldown planned for an end that has moved (the limits were raised or lowered since) is planned
    again for the new end; and the LR in force is the schedule's at this step.

    The schedule itself is a function of the step and the run's total (built from the limits as they
    are now); only the cooldown and the optimizer's current LR come from the saved state.
    """
    selection = config.selection
    if progress.cooldown() is not None:
        follow_cooldown(scheduler, config.schedule, selection, sizes.total_steps, progress.cooldown())
    if reopened and not selection.stop_at_floor:
        progress.floor_confirmed = None  # the floor no longer ends this run
    end_of_run = progress.cooldown_after is not None and progress.floor_confirmed is None
    if end_of_run and progress.cooldown_start_step + progress.cooldown_steps != sizes.total_steps:
        log.info("the run's end moved (now %s): the cooldown planned for the old end is dropped and planned again",
                 f"max_steps {sizes.max_steps}" if sizes.max_steps else f"max_epochs {sizes.max_epochs}")
        progress.cooldown_after, progress.cooldown_epochs = None, 0
        progress.cooldown_start_step, progress.cooldown_steps = 0, 0
        follow_cooldown(scheduler, config.schedule, selection, sizes.total_steps, None)
        sync_lr(scheduler)
        plan = plan_cooldown(progress, sizes, config, after=progress.epoch - 1) if selection.stop_at_floor else None
        if plan is not None:
            start_cooldown(progress, plan, sizes, config, scheduler)
    sync_lr(scheduler)


def sync_lr(scheduler) -> None:
    """Set the optimizer's LR to the scheduler's function at its step: the saved LR was the old plan's.

    Where nothing changed this is the very value LambdaLR computed (the same expression), so an
    exact resume stays exact.
    """
    rates = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, rate in zip(scheduler.optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates  # what get_last_lr() reports (LambdaLR keeps it in this attribute)


@dataclasses.dataclass(frozen=True)
class Outlook:
    """Where the run is headed, as known now (what `status` shows and the ETA counts to)."""

    floor: str  # "off" (stop_at_floor is off), "not yet", or "confirmed at epoch N"
    cooling: bool
    cooldown_epochs_left: int | None  # while cooling, this epoch included
    end_epoch: int
    end_step: int
    eta_until: str  # what the ETA is the time to, in words


def outlook(progress: Progress, sizes: Sizes, config: JobConfig) -> Outlook:
    """Where the run stands on its way to the end, for `status`: the floor's state and what the ETA counts to."""
    selection = config.selection
    floor = ("off" if not selection.stop_at_floor else "not yet" if progress.floor_confirmed is None
             else f"confirmed at epoch {progress.floor_confirmed}")
    limit = f"max_steps {sizes.max_steps}" if sizes.max_steps else f"max_epochs {sizes.max_epochs}"
    if progress.cooling(progress.epoch):
        end_epoch = last_epoch(progress, sizes)
        return Outlook(floor=floor, cooling=True, cooldown_epochs_left=end_epoch - progress.epoch + 1,
                       end_epoch=end_epoch,
                       end_step=min(sizes.total_steps, progress.cooldown_start_step + progress.cooldown_steps),
                       eta_until=f"the end of the cooldown (epoch {end_epoch})")
    sooner = " (a confirmed floor ends it sooner)" if selection.stop_at_floor else ""
    return Outlook(floor=floor, cooling=False, cooldown_epochs_left=None, end_epoch=sizes.max_epochs,
                   end_step=sizes.total_steps, eta_until=f"{limit}{sooner}")


def followed_schedule(progress: Progress, sizes: Sizes, config: JobConfig) -> FollowedSchedule:
    """What the LR schedule was up to this epoch, and where the run is headed (the LoRA file says both)."""
    cooling = progress.cooling(progress.epoch)
    end_step = progress.cooldown_start_step + progress.cooldown_steps if cooling else sizes.total_steps
    return FollowedSchedule(
        kind=schedule_kind(config.schedule, config.selection), warmup_steps=warmup_steps(config.schedule,
                                                                                         sizes.total_steps),
        end_epoch=last_epoch(progress, sizes) if cooling else sizes.max_epochs,
        end_step=min(end_step, sizes.total_steps), cooldown_after=progress.cooldown_after if cooling else None,
        cooldown_epochs=progress.cooldown_epochs if cooling else 0,
        floor_confirmed=progress.floor_confirmed if cooling else None)


def schedule_followed(config: JobConfig, records: list[dict], ending: Ending | None) -> dict:
    """The learning-rate schedule the run actually followed, in words and numbers, from its epoch
    records (cooldown epochs are marked "cooldown") and how it ended (None: training did not finish).

    "cosine; floor confirmed at epoch 31, LR cooled to 0 over 6 epochs, stopped at 37 of max 200".
    """
    schedule = config.schedule
    trained = records[-1]["epoch"] if records else 0
    cooling = [r["epoch"] for r in records if r["cooldown"]]
    floor = ending.floor_epoch if ending else None
    stopped = ending.sentence if ending else "training did not finish"
    final = records[-1]["lr"] if records else None
    kind = schedule_kind(config.schedule, config.selection)  # what `auto` resolved to
    facts = {"type": kind, "max_epochs": schedule.max_epochs, "epochs_trained": trained,
             "floor_confirmed_at": floor, "cooldown_epochs": len(cooling), "final_lr": final,
             "stopped_reason": stopped}
    steps = []
    if floor is not None:
        steps.append(f"floor confirmed at epoch {floor}")
    if cooling:
        to = "to 0" if isinstance(final, (int, float)) and abs(final) < 1e-12 else \
            f"to {final:.3g}" if isinstance(final, (int, float)) else "down"
        # A constant schedule that found no floor cools down at its end: no floor to name then.
        steps.append(f"LR cooled {to} over {len(cooling)} epochs" if floor is not None
                     else f"no floor confirmed, LR cooled {to} over the last {len(cooling)} epochs")
    if not records:
        steps.append("no epoch trained")
    elif trained >= schedule.max_epochs:
        steps.append(f"ran all {schedule.max_epochs} epochs")
    else:
        steps.append(f"stopped at {trained} of max {schedule.max_epochs}")
    facts["text"] = f"{kind}; " + ", ".join(steps)
    return facts
