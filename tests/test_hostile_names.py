"""Hostile names: control characters never reach a terminal or a log raw; reports never re-create
a folder the user removed (issue 11, defects 4 and 5)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from animad.daemon import freeze
from animad.daemon.freeze import handle_folder
from animad.daemon.inbox import Inbox, write_report
from animad.daemon.states import Status
from animad.demo.synthetic import make_dataset, tiny_job
from animad.fsutil import write_atomic
from animad.logs import setup_logging
from animad.safe_text import safe

# What the issue reproduced: clear the screen and set the window title; colour, then forge a line.
SCREEN = "\x1b[2J\x1b]0;owned\x07"
FORGED_FILE = "\x1b[31mRED\nERROR fake line.jpg"
RAW = ("\x1b", "\x07", "\x9b", "\u202e")


def assert_no_raw_controls(text: str) -> None:
    for char in RAW:
        assert char not in text, f"raw {char!r} printed in:\n{text!r}"


def animad(config: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "animad", "--config", str(config), *args], capture_output=True,
                          text=True, cwd=cwd)


def test_safe_shows_every_control_and_bidi_character_as_an_escape():
    assert safe(SCREEN) == "\\x1b[2J\\x1b]0;owned\\x07"
    assert safe(FORGED_FILE) == "\\x1b[31mRED\\nERROR fake line.jpg"
    assert safe("a\rb\tc\x00d\x7fe\x85f\x9bg") == "a\\rb\\tc\\x00d\\x7fe\\x85f\\x9bg"
    assert safe("evil\u202egnp.exe\u2066x\u2028y") == "evil\\u202egnp.exe\\u2066x\\u2028y"
    assert safe("café 日本 @demo, red") == "café 日本 @demo, red"  # ordinary text is left alone
    assert safe(Path("/tmp/a\nb")) == "/tmp/a\\nb"
    assert safe("one\ntwo\x1b", keep_newlines=True) == "one\ntwo\\x1b"


# --- defect 4: ghost folders ---------------------------------------------------------------------

def test_atomic_write_without_make_parents_never_creates_the_folder(tmp_path):
    gone = tmp_path / "removed"
    with pytest.raises(FileNotFoundError):
        write_atomic(gone / "ERRORS.txt", b"report", make_parents=False)
    assert not gone.exists()
    write_atomic(tmp_path / "kept" / "file", b"x")  # everything else still gets its parents made
    assert (tmp_path / "kept" / "file").read_bytes() == b"x"


def test_report_for_a_removed_folder_is_dropped_without_a_ghost(setup):
    _, _, inbox = setup
    folder = make_dataset(inbox / "cat", job=tiny_job())
    assert write_report(folder, "ERROR x\n") and (folder / "ERRORS.txt").read_text() == "ERROR x\n"
    shutil.rmtree(folder)
    assert write_report(folder, "ERROR x\n") is False
    assert not folder.exists()


def test_folder_removed_while_it_is_checked_comes_back_as_no_ghost(setup, monkeypatch):
    daemon, queue, inbox = setup
    folder = make_dataset(inbox / "big", job=tiny_job())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")  # so it gets a report
    real_check = freeze.check_folder

    def check_then_user_removes_it(path, *args, **kwargs):
        result = real_check(path, *args, **kwargs)
        shutil.rmtree(path)  # the user gave up on this folder while animad was validating it
        return result

    monkeypatch.setattr(freeze, "check_folder", check_then_user_removes_it)
    taker = Inbox(daemon, queue, wake=threading.Event())
    taker.tracker.settle = 0
    taker.take()
    assert not folder.exists(), f"ghost folder re-created: {list(folder.iterdir())}"
    assert [r for r in queue.all() if r["status"] == Status.ACCEPTING] == []


# --- defect 5: control characters ----------------------------------------------------------------

def test_hostile_job_name_is_escaped_in_status_and_keeps_the_table(setup, daemon_config, tmp_path):
    daemon, queue, inbox = setup
    hostile = f"{SCREEN}\nFAKE  row\u202e"
    assert handle_folder(make_dataset(inbox / "evil", job=tiny_job(name=hostile)), daemon, queue)
    assert handle_folder(make_dataset(inbox / "plain", job=tiny_job(name="plain")), daemon, queue)
    evil = next(r for r in queue.all() if r["name"] == hostile)
    queue.update(evil["id"], status=Status.FAILED, error=f"image \x1b[31mRED{SCREEN}: cannot read\nsecond line")

    result = animad(daemon_config, "status", cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert_no_raw_controls(out)
    assert "\\x1b[2J\\x1b]0;o" in out and "image \\x1b[31mRED\\x1b[2J" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ID"))
    rows = lines[header + 1:header + 3]
    assert not any(line.startswith(("FAKE", "ERROR fake")) for line in lines), out
    column = lines[header].index("STATUS")
    assert [row[column:].split()[0] for row in rows] == ["failed", "queued"], out  # names cut AFTER escaping

    # A library wrote raw bytes into the job's log: `animad logs` still shows them escaped.
    (Path(evil["job_dir"]) / "train.log").write_text(f"2026-01-01 00:00:00 INFO x: ok\nwarning: {FORGED_FILE}\n")
    logs = animad(daemon_config, "logs", str(evil["id"]), cwd=tmp_path)
    assert logs.returncode == 0, logs.stderr
    assert_no_raw_controls(logs.stdout)
    assert logs.stdout.splitlines()[1:] == ["warning: \\x1b[31mRED", "ERROR fake line.jpg"]

    missing = animad(daemon_config, "logs", f"x{SCREEN}", cwd=tmp_path)
    assert missing.returncode != 0
    assert_no_raw_controls(missing.stdout + missing.stderr)


def test_hostile_file_name_is_escaped_in_check_and_in_errors_txt(setup, daemon_config, tmp_path):
    daemon, queue, inbox = setup
    folder = make_dataset(inbox / f"drop{SCREEN}", job=tiny_job())
    (folder / FORGED_FILE).write_bytes(b"not an image")

    result = animad(daemon_config, "check", str(folder), cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in out, out
    assert_no_raw_controls(out)
    assert "\\x1b[31mRED\\nERROR fake line.jpg" in out
    assert not any(line.startswith("ERROR fake line") for line in out.splitlines()), out

    assert handle_folder(folder, daemon, queue) is None
    report = (folder / "ERRORS.txt").read_text()
    assert_no_raw_controls(report)
    assert "\\x1b[31mRED\\nERROR fake line.jpg" in report
    assert not any(line.startswith("ERROR fake line") for line in report.splitlines()), report


def test_log_lines_escape_hostile_names(setup, tmp_path):
    daemon, queue, inbox = setup
    log_file = tmp_path / "daemon.log"
    setup_logging(log_file, stream=None)
    try:
        folder = make_dataset(inbox / f"bad{SCREEN}\nERROR forged", job=tiny_job())
        (folder / FORGED_FILE).write_bytes(b"not an image")
        assert handle_folder(folder, daemon, queue) is None  # logs "rejected <name>: ..."
        good = make_dataset(inbox / "good", job=tiny_job(name=f"good{SCREEN}\nERROR forged"))
        assert handle_folder(good, daemon, queue)  # logs "queued job 1 (<name>): 8 images"
        logging.getLogger("animad.test").info("%d images of %s at %.1f", 3, FORGED_FILE, 1.25)
    finally:
        logging.shutdown()
        setup_logging(stream=sys.stderr)
    text = log_file.read_text()
    assert_no_raw_controls(text)
    assert "rejected bad\\x1b[2J\\x1b]0;owned\\x07\\nERROR forged" in text
    assert "(good\\x1b[2J\\x1b]0;owned\\x07\\nERROR forged)" in text
    assert "3 images of \\x1b[31mRED\\nERROR fake line.jpg at 1.2" in text
    assert not any(line.startswith("ERROR") for line in text.splitlines()), text
    assert all(line[:4].isdigit() for line in text.splitlines()), text  # every line is a real log line
