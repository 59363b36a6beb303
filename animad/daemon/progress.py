"""How a job is doing, from its queue row (for `animad status` and the demo), and the clock behind it.

The job child reports phases and counts (`PhaseClock` adds when each phase began, the caching rate's
ETA and the eval/save time per epoch); `progress_figures` turns a row into one printable line and the
numbers behind it. Rates and ETAs are shown only for a job whose process is live and wrote them: a
paused, queued or cancelled job, or one whose process has exited, shows where it stands, not how fast.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from animad.daemon.states import Status
from animad.progress_report import Report
from animad.safe_text import safe

LOOP = ("training", "eval", "saving")  # the phases of the epoch loop: the epoch/step/loss numbers stay shown
COUNTED = ("caching", "previews")  # phases that report done/total

PHASE_WORDS = {  # never the status word again ("running loading", "selecting selecting")
    "loading": "loading the models",
    "caching": "caching latents",
    "selecting": "choosing the shortlist (floor analysis)",
    "previews": "rendering previews",
    "starting": "starting",
}


class PhaseClock:
    """Merges a child's progress reports into one dict and adds what the reports alone do not say.

    phase_since: when the current phase began (wall time); eta_seconds for caching, from the rate
    since its first count (cache hits come first and are instant, so the rate is measured between
    counts); epoch_overhead_seconds: the mean eval + save time of an epoch so far, which the
    training ETA adds per epoch left (the loop's own ETA counts steps only).
    """

    def __init__(self):
        self.state: dict = {}
        self.anchor: tuple[float, int] | None = None  # (time, done) of the first count of this phase
        self.overheads: list[float] = []
        self.overhead_began: float | None = None

    def add(self, progress: dict, now: float | None = None) -> bool:
        """Merge one report (a partial one: what changed); True when it started a new phase (worth writing at once)."""
        now = time.time() if now is None else now
        sent, previous = Report.read(progress), Report.read(self.state).phase
        phase = sent.phase or previous
        changed = phase != previous
        if changed:
            if phase in ("eval", "saving") and previous not in ("eval", "saving"):
                self.overhead_began = now
            if phase == "training" and previous in ("eval", "saving") and self.overhead_began is not None:
                self.overheads.append(now - self.overhead_began)
                self.overhead_began = None
            if phase not in LOOP:
                self.state = {}  # a new stage: nothing of the last one is true of it
            for key in ("done", "total"):
                self.state.pop(key, None)
            if phase in COUNTED:
                self.state.pop("eta_seconds", None)
            self.anchor = None
            self.state["phase_since"] = now
        self.state.update(progress)
        if phase in COUNTED and sent.done is not None and sent.total is not None and sent.eta_seconds is None:
            done, total = sent.done, sent.total
            if self.anchor is None or done < self.anchor[1]:  # a new count within the phase starts a new rate
                self.anchor = (now, done)
                self.state.pop("eta_seconds", None)
            elif done > self.anchor[1]:
                self.state["eta_seconds"] = (now - self.anchor[0]) / (done - self.anchor[1]) * (total - done)
        if self.overheads:
            self.state["epoch_overhead_seconds"] = sum(self.overheads) / len(self.overheads)
        self.state["pid"] = os.getpid()  # whose numbers these are: a new process's row is not shown stale ones
        return changed


def _duration(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def floor_words(p: Report) -> str:
    """E.g. "; floor: confirmed at epoch 31, cooling down, 4 epochs left", "; floor: not yet"; "" when not watched."""
    words = "" if p.floor is None or p.floor == "off" else f"; floor: {p.floor}"
    if p.cooling:
        left = p.cooldown_epochs_left
        words += f"{',' if words else ';'} cooling down, {left} epoch{'s' if left != 1 else ''} left"
    return words


def first_line(text: str) -> str:
    """The first line of an error, made safe to print (its names and paths come from the user)."""
    return safe(text.splitlines()[0]) if text and text.splitlines() else ""


def position(p: Report) -> str:
    """Where a job stands: "epoch 3/10 step 120/400" (to where the run now ends), or ""."""
    if p.epoch is None or p.step is None:
        return ""
    return (f"epoch {p.epoch}/{'?' if p.end_epoch is None else p.end_epoch} step {p.step}/"
            f"{'?' if p.end_step is None else p.end_step}")


def training_eta(p: Report, now: float, since_report: float) -> float | None:
    """Seconds to the run's end: steps left at the measured s/it, plus eval and save time per epoch left.

    In the loop's own eval/save phases the steps left do not move, the epoch's remaining eval time is
    counted instead (its mean so far, minus the time the phase has run).
    """
    if p.eta_seconds is None:
        return None
    overhead = p.epoch_overhead_seconds or 0.0
    epoch = p.epoch or 0
    epochs_left = max(0, (p.end_epoch if p.end_epoch is not None else epoch) - epoch)
    if p.phase in ("eval", "saving"):
        in_phase = now - (p.phase_since if p.phase_since is not None else now)
        return p.eta_seconds + max(0.0, overhead - in_phase) + overhead * epochs_left
    return max(0.0, p.eta_seconds - since_report) + overhead * (epochs_left + 1)


def progress_figures(row: dict, now: float | None = None, alive: bool | None = None) -> dict:
    """{"line": one printable line, "phase", "eta_seconds", "eta_until", "done", "total", "live"} for a row.

    alive: whether the row's process is running (the caller looks; None: not known, taken as yes).
    User text in the line (errors, paths) is escaped, so it cannot break a table.
    """
    now = time.time() if now is None else now
    p = Report.read(row.get("progress"))
    status = row["status"]
    out = {"line": "", "phase": p.phase, "eta_seconds": None, "eta_until": None,
           "done": p.done, "total": p.total, "live": False}
    if status == Status.FAILED:
        out["line"] = first_line(row.get("error") or "")[:80] or "failed"
    elif status == Status.DONE:
        out["line"] = f"review: {safe(row['outbox_dir'])}/index.html"
    elif status == Status.ACCEPTING:
        out["line"] = "freezing the dataset into its job folder"
    elif status in (Status.RUNNING, Status.SELECTING):
        if alive is False:
            out.update(line="its process has exited; the daemon records how it ended at its next look (if this "
                            "stays, see the daemon's log: a full disk?)", phase="exited", done=None, total=None)
        elif p.pid and row.get("pid") and p.pid != row["pid"] or p == Report():
            out.update(line=PHASE_WORDS["starting"], phase="starting", done=None, total=None)
        else:
            out["live"] = True
            out.update(live_line(p, now, max(0.0, now - (row.get("heartbeat") or now))))
    else:
        out.update(phase=None, done=None, total=None, line=resting_line(row, p))
    return out


def live_line(p: Report, now: float, since_report: float) -> dict:
    phase = p.phase
    if p.s_per_it is not None and phase in LOOP:
        eta = training_eta(p, now, since_report)
        until = f" to {p.eta_until}" if p.eta_until else ""
        doing = {"eval": f" (evaluating epoch {p.epoch})", "saving": f" (saving epoch {p.epoch})"}.get(phase, "")
        # After an out-of-memory error the loop splits each batch (the same effective batch).
        split = f"; {p.micro_batch} image(s) per forward after running out of GPU memory" if p.micro_batch else ""
        line = (f"{position(p)} loss {p.loss:.4f} {p.s_per_it:.2f} s/it "
                f"ETA {_duration(eta)}{until}{floor_words(p)}{split}{doing}")
        return {"line": line, "eta_seconds": eta, "eta_until": p.eta_until}
    words = PHASE_WORDS.get(phase, safe(phase or ""))
    if phase in COUNTED and p.total:
        eta = None if p.eta_seconds is None else max(0.0, p.eta_seconds - since_report)
        until = "caching is done" if phase == "caching" else "the last preview"
        return {"line": f"{words} {p.done}/{p.total} ETA {_duration(eta)}", "eta_seconds": eta,
                "eta_until": until}
    if phase in ("eval", "saving"):
        return {"line": f"{'evaluating' if phase == 'eval' else 'saving'} epoch {p.epoch}"}
    return {"line": words}


def saved_point(row: dict) -> dict | None:
    """{"epoch", "step"} of the job's saved resume state (state/resume.json, written after resume.pt);
    {} for a saved state whose point is not known; None where there is no saved state.

    The last progress report is not where a job resumes: reports are written every few seconds and a
    state every few minutes (or at a stop), so after a kill the report can be steps ahead of the state.
    A resume.json older than its resume.pt (a kill between the two writes) is not trusted.
    """
    if not row.get("job_dir"):
        return None
    state = Path(row["job_dir"]) / "state"
    try:
        saved = os.stat(state / "resume.pt").st_mtime_ns
    except OSError:
        return None  # no saved state: nothing to correct
    try:
        if os.stat(state / "resume.json").st_mtime_ns < saved:
            return {}
        point = json.loads((state / "resume.json").read_text())
    except (OSError, ValueError):
        return {}  # a state whose point is not known: no step is claimed
    if not isinstance(point, dict) or not all(isinstance(point.get(k), int) for k in ("epoch", "step")):
        return {}
    return point


def resting_line(row: dict, p: Report) -> str:
    """A job no process runs: where it stands and what comes next; never a rate or an ETA.

    Its position is its saved state's (saved_point) where there is one: where it truly resumes.
    """
    saved = saved_point(row) if row["status"] in (Status.QUEUED, Status.PAUSED) else None
    if saved is not None and p.epoch is not None and p.step is not None:
        p = dataclasses.replace(p, epoch=saved["epoch"], step=saved["step"]) if saved else \
            dataclasses.replace(p, epoch=None, step=None)
    status, where = row["status"], position(p)
    if status in (Status.QUEUED, Status.PAUSED) and row.get("job_dir") and not os.path.isdir(row["job_dir"]):
        return f"its job folder is gone: drop the dataset into the inbox again, or animad cancel {row['id']}"
    if p.phase == "waiting" and status in (Status.QUEUED, Status.PAUSED):
        return safe(p.waiting or f"waiting for {p.waiting_for}")  # a chained job (daemon/chain.py)
    selecting = p.phase in ("selecting", "previews") or str(row.get("phase")) == "select"
    if status == Status.CANCELLED:
        if where or selecting:
            return (f"cancelled{' at ' + where if where and not selecting else ' after training'}; files kept "
                    f"(animad retry {row['id']} continues it)")
        return first_line(row.get("error") or "")[:80]
    if selecting:
        return "training done; selection and previews next"
    if status == Status.PAUSED:
        return f"saved at {where}" if where else "saved; resumes from its saved state"
    if where:  # queued after a pause or a crash
        return f"resumes at {where}"
    return ""


def describe_progress(row: dict, now: float | None = None, alive: bool | None = None) -> str:
    """One printable line (see progress_figures)."""
    return progress_figures(row, now, alive)["line"]
