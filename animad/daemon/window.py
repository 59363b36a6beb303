"""Training windows: pure maths on aware local datetimes, so tests can pass any time they like.

The grammar (`22:00-07:00`, `mon-fri 23:00-06:30`, `always`) is parsed in config/window.py. DST is
handled by building each boundary as a local wall-clock time on its own date.
"""

from __future__ import annotations

import datetime as dt

from animad.config.window import Window


def _local(date: dt.date, time: dt.time, tz) -> dt.datetime:
    return dt.datetime.combine(date, time, tzinfo=tz)


def _spans(window: Window, around: dt.datetime):
    """(open, close) datetimes of this window's occurrences starting from two days before `around`."""
    tz = around.tzinfo
    for offset in range(-2, 9):
        day = around.date() + dt.timedelta(days=offset)
        if window.days is not None and day.weekday() not in window.days:
            continue
        opens = _local(day, window.start, tz)
        close_day = day if window.end > window.start else day + dt.timedelta(days=1)
        yield opens, _local(close_day, window.end, tz)


def is_open(now: dt.datetime, windows: list[Window]) -> bool:
    for window in windows:
        if window.always:
            return True
        if any(opens <= now < closes for opens, closes in _spans(window, now)):
            return True
    return False


def next_open(now: dt.datetime, windows: list[Window]) -> dt.datetime | None:
    """When a window next opens (now itself if one is open); None if no window ever opens."""
    if is_open(now, windows):
        return now
    starts = [opens for w in windows if not w.always for opens, _ in _spans(w, now) if opens > now]
    return min(starts) if starts else None


def next_close(now: dt.datetime, windows: list[Window]) -> dt.datetime | None:
    """When the open period containing now ends (overlapping windows merge); None if always open or closed now."""
    if not is_open(now, windows) or any(w.always for w in windows):
        return None
    moment = now
    for _ in range(64):  # walk through chained/overlapping windows
        ends = [closes for w in windows for opens, closes in _spans(w, moment) if opens <= moment < closes]
        if not ends:
            return moment
        moment = max(ends)
        if not is_open(moment, windows):
            return moment
    return moment


def local_now() -> dt.datetime:
    """The real local time, aware (the daemon's loop and `animad status` decide the window by it)."""
    return dt.datetime.now().astimezone()
