"""One line that says how a job is doing, from its queue row (for `animad status` and the demo)."""

from __future__ import annotations

from animad.daemon.states import Status
from animad.safe_text import safe


def _duration(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def describe_floor(p: dict) -> str:
    """E.g. "; floor: confirmed at epoch 31, cooling down, 4 epochs left", "; floor: not yet"; "" when not watched."""
    floor = p.get("floor")
    if floor is None or floor == "off":
        words = ""
    else:
        words = f"; floor: {floor}"
    if p.get("cooling"):
        left = p.get("cooldown_epochs_left")
        words += f"{',' if words else ';'} cooling down, {left} epoch{'s' if left != 1 else ''} left"
    return words


def first_line(text: str) -> str:
    """The first line of an error, made safe to print (its names and paths come from the user)."""
    return safe(text.splitlines()[0]) if text and text.splitlines() else ""


def describe_progress(row: dict) -> str:
    """One printable line: user text in it (errors, paths) is escaped, so it cannot break a table."""
    p = row.get("progress") or {}
    if row["status"] == Status.FAILED:
        return first_line(row.get("error") or "")[:80] or "failed"
    if row["status"] == Status.DONE:
        return f"review: {safe(row['outbox_dir'])}/index.html"
    if not p:
        return ""
    if "s_per_it" in p:
        phase = "" if p.get("phase") == "training" else f" ({p.get('phase')})"
        # end_epoch/end_step: where the run now ends (the cooldown's end once cooling); older rows lack them.
        until = f" to {p['eta_until']}" if p.get("eta_until") else ""
        return (f"epoch {p['epoch']}/{p.get('end_epoch', p['max_epochs'])} step {p['step']}/"
                f"{p.get('end_step', p['total_steps'])} loss {p['loss']:.4f} {p['s_per_it']:.2f} s/it "
                f"ETA {_duration(p.get('eta_seconds'))}{until}{describe_floor(p)}{phase}")
    if p.get("phase") == "caching" and p.get("total"):
        return f"caching latents {p['done']}/{p['total']}"
    if "epoch" in p:
        return f"{p.get('phase')} (epoch {p['epoch']})"
    return safe(p.get("phase", ""))
