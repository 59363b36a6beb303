"""Window maths with injected clocks: midnight, weekdays, always, DST."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from animad.config.window import parse_windows
from animad.daemon.window import is_open, next_close, next_open

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, tz=BERLIN) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=tz)


def test_window_across_midnight():
    windows = parse_windows(["22:00-07:00"])
    assert is_open(at("2026-11-23 23:30"), windows)
    assert is_open(at("2026-11-24 06:59"), windows)
    assert not is_open(at("2026-11-24 07:00"), windows)
    assert not is_open(at("2026-11-24 12:00"), windows)
    assert next_open(at("2026-11-24 12:00"), windows) == at("2026-11-24 22:00")
    assert next_close(at("2026-11-23 23:30"), windows) == at("2026-11-24 07:00")


def test_weekdays_name_the_start_day():
    windows = parse_windows(["mon-fri 22:00-07:00"])
    friday_night, saturday_morning = at("2026-11-27 23:00"), at("2026-11-28 06:00")
    assert is_open(friday_night, windows) and is_open(saturday_morning, windows)
    assert not is_open(at("2026-11-28 23:00"), windows)  # Saturday night is off
    assert next_open(at("2026-11-28 12:00"), windows) == at("2026-11-30 22:00")  # Monday


def test_several_windows_and_always():
    windows = parse_windows(["sat,sun 09:00-18:00", "mon-fri 23:00-06:00"])
    assert is_open(at("2026-11-28 10:00"), windows) and not is_open(at("2026-11-27 10:00"), windows)
    assert is_open(at("2026-11-25 12:00"), parse_windows(["always"]))
    assert next_close(at("2026-11-25 12:00"), parse_windows(["always"])) is None


def test_touching_windows_merge():
    windows = parse_windows(["20:00-23:00", "23:00-02:00"])
    assert next_close(at("2026-11-25 21:00"), windows) == at("2026-11-26 02:00")


def test_dst_change_keeps_wall_clock_times():
    windows = parse_windows(["22:00-07:00"])
    # Night of 2026-10-24/25: Berlin goes from CEST (+02) to CET (+01) at 03:00.
    close = next_close(at("2026-10-24 23:00"), windows)
    assert close == at("2026-10-25 07:00") and close.utcoffset() == dt.timedelta(hours=1)
    utc = dt.timezone.utc
    # (Same-zone subtraction in Python is wall-clock; compare in UTC to see the real length.)
    assert close.astimezone(utc) - at("2026-10-24 22:00").astimezone(utc) == dt.timedelta(hours=10)
    spring = next_close(at("2026-03-28 23:00"), windows)
    assert spring.hour == 7
    assert spring.astimezone(utc) - at("2026-03-28 22:00").astimezone(utc) == dt.timedelta(hours=8)


@pytest.mark.parametrize("bad", ["22:00", "25:00-07:00", "22:00-22:00", "moon 22:00-07:00", "", "nightly"])
def test_bad_windows_say_how_to_write_them(bad):
    with pytest.raises(ValueError):
        parse_windows([bad])
