"""What the foreground commands show, and the small CLI gaps of issue 13: a bar for every long phase of
`animad train`, selection's progress events, `make-tiny`'s paste-able snippet, help for every option,
the README's commands table, TensorBoard stopped with its parent, `logs -f` ending with its job."""

from __future__ import annotations

import argparse
import io
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from animad.cli.local import ProgressBar
from animad.cli.main import ORDER, build_parser, main
from animad.config.daemon import load_daemon_config
from animad.daemon.queue import Queue, queue_path
from animad.daemon.states import Status
from animad.demo.synthetic import make_dataset, tiny_job
from daemon_helpers import HANG_SECONDS

REPO = Path(__file__).resolve().parent.parent


def wait_for(condition, what: str, process: subprocess.Popen | None = None):
    """Poll until condition() is truthy; fail on a hang, or at once if the process we wait on died."""
    deadline = time.monotonic() + HANG_SECONDS
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None and not condition():
            raise AssertionError(f"the process exited ({process.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"hung waiting for {what}")


def verbs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


# --- help for every option, and the README's table ------------------------------------------------

def test_every_option_of_every_verb_has_help():
    parser = build_parser()
    missing = [f"animad {a.option_strings or a.dest}" for a in options(parser) if not a.help]
    for name, sub in verbs(parser).items():  # the hidden `job` verb too: it is read when debugging the daemon
        missing += [f"animad {name} {'/'.join(a.option_strings) or a.dest}" for a in options(sub)
                    if not a.help or a.help == argparse.SUPPRESS]
    assert not missing, f"options without help: {missing}"


def readme_command_rows() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    return [line for line in table.splitlines() if line.startswith("| `")]


def test_readme_commands_table_names_every_verb_and_option():
    rows = readme_command_rows()
    problems = []
    for name, sub in verbs(build_parser()).items():
        if name == "job":  # hidden: the daemon's own
            continue
        # A row is a verb's when one of its first cell's `code` spans starts with the verb.
        mine = [row for row in rows if any(span.split()[:1] == [name] or span.split()[:2] == ["animad", name]
                                           for span in re.findall(r"`([^`]+)`", re.split(r"(?<!\\)\|", row)[1]))]
        if not mine:
            problems.append(f"no row for `animad {name}`")
            continue
        for action in options(sub):
            flags = [flag for flag in action.option_strings if flag.startswith("--")]
            if flags and not any(flag in " ".join(mine) for flag in flags):
                problems.append(f"`animad {name}` row lacks {flags[0]}")
    assert not problems, problems
    assert set(ORDER) - {"job"} <= set(verbs(build_parser()))


# --- make-tiny ---------------------------------------------------------------------------------

def test_make_tiny_prints_a_models_snippet_that_works_as_animad_yaml(tmp_path, capsys):
    assert main(["make-tiny", str(tmp_path / "my models")]) == 0
    out = capsys.readouterr().out
    snippet = out[out.index("default_model:"):]
    config = tmp_path / "animad.yaml"
    config.write_text(snippet)
    daemon = load_daemon_config(config)
    models = daemon.model_set(None)
    assert models == {key: (tmp_path / "my models" / f"{key}.safetensors").resolve()
                      for key in ("dit", "text_encoder", "vae")}
    assert daemon.tokenizer_dirs() == [(tmp_path / "my models" / "tokenizers").resolve()]
    # The pasted config really trains: `animad check` finds the model files and the tokenizers.
    dataset = make_dataset(tmp_path / "cat", count=2, job=tiny_job())
    assert main(["--config", str(config), "check", str(dataset)]) == 0, capsys.readouterr()
    # And the README shows how (the same lines, with the user's own path).
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "animad make-tiny" in readme and "default_model: tiny" in readme and "tokenizers:" in readme


# --- the foreground progress bar ------------------------------------------------------------------

def training(step, epoch, end_step, end_epoch, **extra):
    return {"phase": "training", "epoch": epoch, "max_epochs": 6, "step": step, "total_steps": 12,
            "loss": 0.5, "s_per_it": 0.1, "end_step": end_step, "end_epoch": end_epoch, **extra}


def test_progress_bar_shows_every_long_phase_with_an_eta_and_ends_where_the_run_ends():
    out = io.StringIO()
    bar = ProgressBar(file=out)
    seen = {}
    events = [{"phase": "loading"}, {"phase": "caching"}]
    events += [{"phase": "caching", "done": d, "total": 4} for d in range(1, 5)]
    events += [training(s, (s + 1) // 2, 12, 6, floor="not yet") for s in range(1, 5)]
    events += [{"phase": "eval", "epoch": 2}, {"phase": "saving", "epoch": 2}]
    # The floor is confirmed at epoch 2: the run now ends after a cooldown, at epoch 3 (step 6), not max_epochs 6.
    events += [training(s, 3, 6, 3, floor="confirmed at epoch 2", cooling=True, cooldown_epochs_left=1)
               for s in range(5, 7)]
    events += [{"phase": "selecting"}]
    events += [{"phase": "previews", "done": d, "total": 3, **({"eta_seconds": 1.0} if d else {})} for d in range(4)]
    for event in events:
        bar(event)
        if bar.bar is not None:
            seen[bar.phase] = (bar.bar.n, bar.bar.total, bar.bar.desc.rstrip(": "))
    bar.close()
    assert seen["caching"] == (4, 4, "caching latents")
    assert seen["training"] == (6, 6, "epoch 3/3"), "the bar must end at the cooldown's end"
    assert seen["previews"] == (3, 3, "previews")
    text = out.getvalue()
    for line in ("loading the models", "finding the floor and the shortlist"):
        assert line in text
    shown = re.split(r"[\r\n]", text)
    for label in ("caching latents", "epoch 3/3", "previews"):
        assert any(label in line and re.search(r"<\d\d:\d\d", line) for line in shown), f"no ETA for {label}"
    assert any("evaluating epoch 2" in line for line in shown)
    assert any("cooling" in line for line in shown)


def test_train_shows_caching_training_and_preview_bars_and_selection_reports_progress(tmp_path, daemon_config):
    from animad.layout import JobPaths
    from animad.select.run import select_job

    dataset = make_dataset(tmp_path / "cat", count=4, job=tiny_job(epochs=2, previews={"steps": 2}))
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "animad", "--config", str(daemon_config), "train", str(dataset),
                             "--out", str(out)], capture_output=True, text=True, timeout=HANG_SECONDS)
    assert result.returncode == 0, result.stdout + result.stderr
    shown = re.split(r"[\r\n]", result.stderr)
    for label in ("caching latents", "epoch 2/2", "previews"):
        assert any(label in line and "100%" in line for line in shown), f"no finished {label} bar:\n{result.stderr}"
    assert "review package:" in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("try epoch ")  # the last line: where to start (issue 20)

    events = []
    # Other steps than the job's: every image is rendered again, so every one is counted.
    select_job(JobPaths(out), daemon=load_daemon_config(daemon_config), outbox=tmp_path / "again", steps=1,
               on_progress=events.append)
    assert events[0] == {"phase": "selecting"}
    previews = [e for e in events if e["phase"] == "previews"]
    total = previews[0]["total"]
    assert total > 0 and [e["done"] for e in previews] == list(range(total + 1))
    assert all(e["total"] == total for e in previews)
    assert all(e["eta_seconds"] >= 0 for e in previews[1:]) and previews[-1]["eta_seconds"] == 0


# --- logs -f and tensorboard: a job row in a real queue ---------------------------------------------

@pytest.fixture()
def job_row(tmp_path):
    """(config path, queue, job id, job folder) for a running job with a log, no models needed."""
    config = tmp_path / "animad.yaml"
    config.write_text(yaml.safe_dump({"windows": ["always"]}))
    queue = Queue(queue_path(load_daemon_config(config)))
    job_dir = tmp_path / "state" / "jobs" / "1-cat"
    job_dir.mkdir(parents=True)
    job_id = queue.add("cat", str(tmp_path / "inbox" / "cat"))
    queue.update(job_id, status=Status.RUNNING, job_dir=str(job_dir))
    return config, queue, job_id, job_dir


def read_lines_in_background(process: subprocess.Popen) -> list[str]:
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True).start()
    return lines


def append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)


@pytest.mark.parametrize("end", [Status.DONE, Status.FAILED, Status.CANCELLED])
def test_logs_follow_prints_the_rest_and_ends_when_the_job_ends(job_row, end):
    config, queue, job_id, job_dir = job_row
    log = job_dir / "train.log"
    log.write_text("first line\n")
    process = subprocess.Popen([sys.executable, "-m", "animad", "--config", str(config), "logs", str(job_id), "-f"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = read_lines_in_background(process)
        wait_for(lambda: "first line\n" in lines, "the log's first line", process)
        append(log, "second line\n")
        wait_for(lambda: "second line\n" in lines, "a line written while following", process)
        assert process.poll() is None, "a running job is followed on"
        # The job writes its last line, then ends: the line is printed, and the command returns.
        append(log, "last line\n")
        queue.update(job_id, status=end)
        assert process.wait(timeout=HANG_SECONDS) == 0
        wait_for(lambda: "last line\n" in lines, "the job's last line")
        assert lines.count("last line\n") == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_logs_follow_of_an_ended_job_prints_it_and_returns(job_row):
    config, queue, job_id, job_dir = job_row
    (job_dir / "train.log").write_text("all of it\n")
    queue.update(job_id, status=Status.DONE)
    result = subprocess.run([sys.executable, "-m", "animad", "--config", str(config), "logs", str(job_id), "-f"],
                            capture_output=True, text=True, timeout=HANG_SECONDS)
    assert result.returncode == 0 and result.stdout == "all of it\n", result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL], ids=lambda s: s.name)
def test_tensorboard_stops_with_animad_on_any_signal(job_row, sig):
    pytest.importorskip("tensorboard")
    config, _, job_id, job_dir = job_row
    (job_dir / "tb").mkdir()
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "animad", "--config", str(config), "tensorboard", str(job_id),
                                "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = read_lines_in_background(process)
        wait_for(lambda: listening(port), f"TensorBoard on 127.0.0.1:{port}", process)
        tensorboard = children(process.pid)
        assert len(tensorboard) == 1, tensorboard
        group = tensorboard[0]  # its own process group: the group id is its pid
        assert group_members(group), "TensorBoard runs in its own process group"
        process.send_signal(sig)
        process.wait(timeout=HANG_SECONDS)
        wait_for(lambda: not group_members(group), "TensorBoard and everything it started to exit")
        wait_for(lambda: not listening(port), f"127.0.0.1:{port} to be free")
        assert "TensorBoard for job" in "".join(lines)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
