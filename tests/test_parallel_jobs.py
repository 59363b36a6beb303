"""One job per GPU (animad.yaml `parallel_jobs: true`): the config, and a real daemon running two real
children at once. Without CUDA the slots still work (each child trains on the CPU), which is how these
tests run parallel jobs; each child is pinned with CUDA_VISIBLE_DEVICES all the same."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from animad.config.daemon import load_daemon_config
from animad.config.problems import ConfigError
from animad.daemon.states import ACTIVE, Status
from animad.demo.synthetic import make_dataset, tiny_job
from animad.layout import read_epochs_log

from daemon_helpers import DaemonProcess, configure, drop


def slots_of(tmp_path, text: str):
    path = tmp_path / "animad.yaml"
    path.write_text(text)
    daemon = load_daemon_config(path)
    return daemon.slot_devices(), daemon.job_world()


def test_gpus_a_count_or_a_list_and_parallel_jobs(tmp_path):
    assert slots_of(tmp_path, "{}\n") == ([None], 1)  # today's default: one job, the environment as it is
    assert slots_of(tmp_path, "gpus: 2\n") == ([None], 2)  # a count: one job, data parallel
    assert slots_of(tmp_path, "gpus: [1, 3]\n") == (["1,3"], 2)  # a list: one job on exactly those GPUs
    assert slots_of(tmp_path, "gpus: [0, 1]\nparallel_jobs: true\n") == (["0", "1"], 1)  # a job per GPU
    assert slots_of(tmp_path, "gpus: [2, 5]\nparallel_jobs: true\n") == (["2", "5"], 1)
    assert slots_of(tmp_path, "gpus: 2\nparallel_jobs: true\n") == (["0", "1"], 1)  # a count: GPUs 0..N-1


@pytest.mark.parametrize("text, words", [
    ("gpus: 0\n", "gpus: 0 GPUs: a count is 1 to 16"),
    ("gpus: []\n", "gpus: an empty list names no GPU"),
    ("gpus: [0, 0]\nparallel_jobs: true\n", "gpus: GPU 0 is listed twice"),
    ("gpus: [-1]\n", "gpus: -1 is not a GPU index"),
    ("gpus: [a]\n", "gpus[0]: 'a' is not a whole number"),
    ("gpus: two\n", "gpus: 'two' is not a whole number"),
    ("parallel_jobs: maybe\n", "parallel_jobs: 'maybe' is not true/false"),
])
def test_bad_gpus_values_say_what_to_write(tmp_path, text, words):
    with pytest.raises(ConfigError) as caught:
        slots_of(tmp_path, text)
    message = str(caught.value)
    assert words in message and "animad.yaml" in message and "->" in message


def epochs_of(row) -> list[int]:
    return [r["epoch"] for r in read_epochs_log(Path(row["job_dir"]) / "epochs.jsonl")]


def cli(config: Path, *args) -> str:
    return subprocess.run([sys.executable, "-m", "animad", "--config", str(config), *args], check=True,
                          capture_output=True, text=True, timeout=120).stdout


def child_env(pid: int) -> dict[str, str]:
    items = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in items if b"=" in item)


def two_jobs(tmp_path, epochs: int) -> None:
    job = tiny_job(epochs=epochs, selection={"stop_at_floor": False}, data={"batch_size": 1, "repeats": 6},
                   schedule={"max_epochs": epochs, "state_every_minutes": 0.005})
    for seed, name in enumerate(("left", "right")):
        make_dataset(tmp_path / "staging" / name, count=6, seed=seed, job=job)
    for name in ("left", "right"):  # dropped together: both queue before the first child has loaded
        drop(tmp_path / "staging" / name, tmp_path / "inbox")


def both_running(daemon) -> list[dict]:
    """Both rows running at once, each in its own slot with its own live process."""
    rows = [daemon.job("left"), daemon.job("right")]
    if all(r and r["status"] in ACTIVE and r["pid"] for r in rows) and len({r["pid"] for r in rows}) == 2:
        return rows
    return []


def assert_done(row: dict, epochs: int) -> None:
    assert row["status"] == Status.DONE, row["error"]
    assert epochs_of(row) == list(range(1, epochs + 1))  # nothing lost or trained twice
    assert (Path(row["outbox_dir"]) / "index.html").is_file()


@pytest.mark.slow
def test_two_jobs_train_at_once_one_per_slot_and_a_paused_one_resumes(tmp_path, daemon_config):
    configure(daemon_config, gpus=[0, 1], parallel_jobs=True)
    daemon = DaemonProcess(daemon_config).start()
    try:
        two_jobs(tmp_path, epochs=3)
        left, right = daemon.wait(lambda: both_running(daemon), what="both jobs running at once")
        assert {left["slot"], right["slot"]} == {0, 1} and {left["gpu"], right["gpu"]} == {"0", "1"}
        for row in (left, right):  # each child sees its own GPU only
            assert child_env(row["pid"])["CUDA_VISIBLE_DEVICES"] == row["gpu"]
        # status says which GPU each running job has, in the table and in --json
        out = cli(daemon_config, "status")
        assert "GPU" in out.splitlines()[1] and "gpu 0" in out and "gpu 1" in out, out
        shown = {j["name"]: j["shown"]["gpu"] for j in json.loads(cli(daemon_config, "status", "--json"))["jobs"]}
        assert {shown["left"], shown["right"]} == {"gpu 0", "gpu 1"}

        # Pausing one leaves the other running; resumed, it takes the free slot again.
        daemon.wait(lambda: "s_per_it" in (daemon.job("left")["progress"] or {}), what="left training")
        cli(daemon_config, "pause", "left")
        paused = daemon.wait_status("left", Status.PAUSED, Status.FAILED)
        assert paused["status"] == Status.PAUSED and paused["held"] == 1, paused["error"]
        cli(daemon_config, "resume", "left")
        again = daemon.wait(lambda: (r := daemon.job("left")) and (r["status"] in ACTIVE and r["pid"]
                                                                   and r["pid"] != left["pid"]
                                                                   or r["status"] == Status.DONE) and r,
                            what="the paused job to run again")
        assert again["status"] == Status.DONE or again["slot"] in (0, 1)

        for name in ("left", "right"):
            assert_done(daemon.wait_status(name, Status.DONE, Status.FAILED), epochs=3)
        assert "on GPU 0" in daemon.log_text() and "on GPU 1" in daemon.log_text()
    finally:
        daemon.stop()


@pytest.mark.slow
def test_kill_9_of_the_daemon_with_two_children_then_restart(tmp_path, daemon_config):
    configure(daemon_config, gpus=2, parallel_jobs=True)
    daemon = DaemonProcess(daemon_config).start()
    two_jobs(tmp_path, epochs=2)
    daemon.wait(lambda: both_running(daemon) and all("s_per_it" in (daemon.job(n)["progress"] or {})
                                                     for n in ("left", "right")),
                what="both jobs training at once")
    daemon.process.kill()  # the daemon only: its children are told (PDEATHSIG) and save, or are adopted
    daemon.process.wait()
    daemon.log.close()
    restarted = DaemonProcess(daemon_config).start()
    try:
        for name in ("left", "right"):
            assert_done(restarted.wait_status(name, Status.DONE, Status.FAILED), epochs=2)
        text = restarted.log_text()
        assert text.count("from an earlier daemon") + text.count("resumes from its last saved state") >= 2
    finally:
        restarted.stop()
