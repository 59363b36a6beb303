"""Training windows: pure maths on aware local datetimes, so tests can inject any clock.

A window is `HH:MM-HH:MM` (it may cross midnight), optionally preceded by days (`mon-fri`,
`sat,sun`); the days name the day the window *starts* on. `always` is always open. DST is handled by
building each boundary as a local wall-clock time on its own date.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
from pathlib import Path

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
FORMAT_HELP = "use 'HH:MM-HH:MM' (e.g. '22:00-07:00'), with optional days ('mon-fri 22:00-07:00'), or 'always'"


@dataclasses.dataclass(frozen=True)
class Window:
    days: frozenset[int] | None  # weekday numbers (Monday = 0) the window starts on; None = every day
    start: dt.time | None  # None means "always"
    end: dt.time | None

    @property
    def always(self) -> bool:
        return self.start is None


def _parse_days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.lower().split(","):
        part = part.strip()
        if "-" in part:
            first, last = (p.strip()[:3] for p in part.split("-", 1))
            if first not in DAYS or last not in DAYS:
                raise ValueError(f"unknown day range '{part}'")
            i = DAYS.index(first)
            while True:
                days.add(i)
                if i == DAYS.index(last):
                    break
                i = (i + 1) % 7
        elif part[:3] in DAYS:
            days.add(DAYS.index(part[:3]))
        else:
            raise ValueError(f"unknown day '{part}'")
    return frozenset(days)


def _parse_time(text: str) -> dt.time:
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    if not match or int(match.group(1)) > 24 or int(match.group(2)) > 59:
        raise ValueError(f"'{text}' is not a time like 22:00")
    hour, minute = int(match.group(1)), int(match.group(2))
    return dt.time(0, 0) if hour == 24 else dt.time(hour, minute)


def parse_window(text: str) -> Window:
    text = str(text).strip()
    if text.lower() == "always":
        return Window(None, None, None)
    match = re.fullmatch(r"(?:(?P<days>[A-Za-z,\- ]+?)\s+)?(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})", text)
    if not match:
        raise ValueError(f"'{text}' is not a window; {FORMAT_HELP}")
    days = _parse_days(match.group("days")) if match.group("days") else None
    start, end = _parse_time(match.group("start")), _parse_time(match.group("end"))
    if start == end:
        raise ValueError(f"'{text}' starts and ends at the same time; use 'always' for a window that never closes")
    return Window(days, start, end)


def parse_windows(texts: list[str]) -> list[Window]:
    if not texts:
        raise ValueError(f"no window given; {FORMAT_HELP}")
    return [parse_window(t) for t in texts]


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


class Clock:
    """Local time, or a fake time from $ANIMAD_FAKE_CLOCK_FILE (an ISO datetime) for tests."""

    def __init__(self):
        self.fake = os.environ.get("ANIMAD_FAKE_CLOCK_FILE")

    def now(self) -> dt.datetime:
        if self.fake:
            try:
                text = Path(self.fake).read_text().strip()
                value = dt.datetime.fromisoformat(text)
                return value if value.tzinfo else value.astimezone()
            except (OSError, ValueError):
                pass
        return dt.datetime.now().astimezone()
