"""One line that says how a job is doing, from its queue row (for `animad status` and the demo)."""

from __future__ import annotations

from animad.daemon.states import Status


def _duration(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def describe_progress(row: dict) -> str:
    p = row.get("progress") or {}
    if row["status"] == Status.FAILED:
        return (row.get("error") or "").splitlines()[0][:80] if row.get("error") else "failed"
    if row["status"] == Status.DONE:
        return f"review: {row['outbox_dir']}/index.html"
    if not p:
        return ""
    if "s_per_it" in p:
        phase = "" if p.get("phase") == "training" else f" ({p.get('phase')})"
        return (f"epoch {p['epoch']}/{p['max_epochs']} step {p['step']}/{p['total_steps']} loss {p['loss']:.4f} "
                f"{p['s_per_it']:.2f} s/it ETA {_duration(p.get('eta_seconds'))}{phase}")
    if p.get("phase") == "caching" and p.get("total"):
        return f"caching latents {p['done']}/{p['total']}"
    if "epoch" in p:
        return f"{p.get('phase')} (epoch {p['epoch']})"
    return str(p.get("phase", ""))
