"""A disk that fills up mid-run: a clear error, no litter, nothing lost, and a retry that finishes.

The full disk is real: a small tmpfs mounted over the run's epochs folder in a private mount
namespace (`unshare -rm`), so the kernel itself answers ENOSPC. Where unprivileged namespaces are
not allowed the test is skipped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from animad.layout import read_epochs_log
from animad.demo.synthetic import make_dataset, tiny_job
from daemon_helpers import HANG_SECONDS

EPOCHS = 4


def namespaces_work(tmp_path) -> bool:
    if not shutil.which("unshare"):
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    result = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
                            capture_output=True)
    return result.returncode == 0


def train_command(config, dataset, out) -> list[str]:
    return [sys.executable, "-m", "animad", "--config", str(config), "train", str(dataset), "--out", str(out),
            "--no-select"]


@pytest.mark.slow
def test_full_disk_mid_run_fails_clearly_keeps_every_epoch_and_resumes(tmp_path, daemon_config):
    if not namespaces_work(tmp_path):
        pytest.skip("unshare -rm with a tmpfs mount is not allowed here")
    job = tiny_job(epochs=EPOCHS, precision={"save": "fp32"}, selection={"stop_at_floor": False},
                   data={"batch_size": 1, "repeats": 1}, network={"dim": 4})
    dataset = make_dataset(tmp_path / "ds", count=4, job=job)

    # One epoch of the same job elsewhere tells us how big an epoch file is (and warms the cache).
    probe_job = {**job, "schedule": {**job["schedule"], "max_epochs": 1}}
    probe = make_dataset(tmp_path / "probe", count=4, job=probe_job)
    subprocess.run(train_command(daemon_config, probe, tmp_path / "probe-run"), check=True, capture_output=True,
                   timeout=300)
    epoch_bytes = (tmp_path / "probe-run" / "epochs" / "probe-e0001.safetensors").stat().st_size

    # Room for two epoch files and a half: epoch 3's save hits a really full disk.
    out = tmp_path / "run"
    (out / "epochs").mkdir(parents=True)
    saved = tmp_path / "saved-epochs"
    size_kb = (epoch_bytes * 5 // 2) // 1024 + 1
    command = " ".join(f"'{part}'" for part in train_command(daemon_config, dataset, out))
    script = (f"mount -t tmpfs -o size={size_kb}k tmpfs '{out}/epochs' || exit 99\n"
              f"{command} > '{tmp_path}/full.log' 2>&1; rc=$?\n"
              f"cp -a '{out}/epochs/.' '{saved}/'\n"  # the tmpfs vanishes with the namespace
              "exit $rc\n")
    saved.mkdir()
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], timeout=300)
    output = (tmp_path / "full.log").read_text()
    assert result.returncode == 2, output[-3000:]  # a user error, not a crash
    assert "Traceback" not in output, output[-3000:]
    assert "disk full while writing" in output and "ds-e0003.safetensors" in output, output[-3000:]
    assert "free some space" in output, output[-3000:]
    # No half-written file and no temp litter: only the epochs that were really saved.
    assert sorted(p.name for p in saved.iterdir()) == ["ds-e0001.safetensors", "ds-e0002.safetensors"]
    assert [r["epoch"] for r in read_epochs_log(out / "epochs.jsonl")] == [1, 2]

    # The user frees space (here: the real disk again) and runs the same command: it finishes.
    for file in saved.iterdir():
        shutil.copy2(file, out / "epochs" / file.name)
    rerun = subprocess.run(train_command(daemon_config, dataset, out), capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert [r["epoch"] for r in read_epochs_log(out / "epochs.jsonl")] == list(range(1, EPOCHS + 1))
    assert sorted(p.name for p in (out / "epochs").iterdir()) == [f"ds-e{e:04d}.safetensors"
                                                                   for e in range(1, EPOCHS + 1)]
    # The two epochs saved before the disk filled were kept as they were, not retrained.
    for file in saved.iterdir():
        assert (out / "epochs" / file.name).read_bytes() == file.read_bytes()


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_litter(tmp_path):
    from animad.fsutil import atomic_file, remove_stale_temp_files, write_atomic

    target = tmp_path / "ds-e0001.safetensors"
    write_atomic(target, b"the epoch the user already has")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"half of a new ep")
            raise RuntimeError("killed by a full disk halfway")
    assert target.read_bytes() == b"the epoch the user already has"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]

    # What a SIGKILL mid-write leaves is cleared at the next start, and user files are never touched.
    (tmp_path / f".{target.name}.tmp-12345").write_bytes(b"torn")
    (tmp_path / ".hidden-user-file").write_bytes(b"mine")
    remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden-user-file", target.name]


@pytest.mark.slow
def test_daemon_survives_a_disk_filled_mid_run_and_retry_finishes_the_job(tmp_path, daemon_config):
    """The daemon's state dir (queue, job folders) is a small tmpfs that another program fills."""
    import json
    from pathlib import Path

    if not namespaces_work(tmp_path):
        pytest.skip("unshare -rm with a tmpfs mount is not allowed here")
    script = Path(__file__).parent / "disk_full_daemon.py"
    result = subprocess.run(["unshare", "-rm", sys.executable, str(script), str(daemon_config), str(tmp_path)],
                            capture_output=True, text=True, timeout=4 * HANG_SECONDS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    context = json.dumps({k: v for k, v in seen.items() if k != "daemon_log"}, indent=1) + seen["daemon_log"]
    assert seen["failed_status"] == "failed", context
    assert "disk full while writing" in seen["error"] and "free some space" in seen["error"], context
    assert seen["daemon_alive_while_full"], context
    assert "Traceback" not in seen["daemon_log"], context  # one clear line each, no stack dumps
    code, status_output = seen["status_while_full"]
    assert code == 0 and "Traceback" not in status_output, context  # `animad status` still works
    assert all(name.endswith(".safetensors") and not name.startswith(".") for name in
               seen["epoch_files_at_failure"]), context  # no half-written or temp files
    # `animad status` shows the whole reason and the command that continues the job.
    assert "free some space" in seen["status_after"] and "animad retry 1" in seen["status_after"], context
    assert "queued again" in seen["retry_output"], context
    assert seen["final_status"] == "done", context
    assert seen["epochs"] == list(range(1, 9)), context
    assert seen["epoch_files"] == [f"full-e{e:04d}.safetensors" for e in range(1, 9)], context
    assert seen["outbox_page"], context
