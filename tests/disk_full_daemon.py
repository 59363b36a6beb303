"""Run inside `unshare -rm`: the daemon's state dir is a small tmpfs that another program fills mid-run.

Prints one JSON object of what it saw (the test asserts on it). Everything happens in this one
process tree because the tmpfs vanishes with the mount namespace.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from daemon_helpers import DaemonProcess, configure, drop  # noqa: E402

from animad.daemon.queue import pid_alive  # noqa: E402
from animad.daemon.states import Status  # noqa: E402
from animad.layout import read_epochs_log  # noqa: E402
from animad.demo.synthetic import make_dataset, tiny_job  # noqa: E402


def fill(path: Path) -> int:
    """Write zeros until the file system says ENOSPC (what a download or a video render would do)."""
    written = 0
    with open(path, "wb", buffering=0) as handle:
        try:
            while True:
                written += handle.write(b"\0" * (1 << 16))
        except OSError:
            pass
    return written


def main(config: Path, root: Path) -> dict:
    configure(config)
    state = root / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(state)], check=True)
    seen: dict = {}
    daemon = DaemonProcess(config).start()
    try:
        job = tiny_job(epochs=8, selection={"stop_at_floor": False}, data={"batch_size": 1, "repeats": 6})
        drop(make_dataset(root / "staging" / "full", count=6, job=job), root / "inbox")
        row = daemon.wait(lambda: (r := daemon.job("full")) and r["job_dir"]
                          and len(read_epochs_log(Path(r["job_dir"]) / "epochs.jsonl")) >= 2 and r, what="2 epochs")
        epochs_dir = Path(row["job_dir"]) / "epochs"
        filler = root / "state" / "someone-elses-download.bin"
        seen["filled_bytes"] = fill(filler)
        # The job process hits ENOSPC on its next save and exits. While the disk stays full the queue
        # may be unwritable too; the daemon must ride that out and record the failure once it can.
        daemon.wait(lambda: not pid_alive(row["pid"]), what="the job process to stop")
        seen["epoch_files_at_failure"] = sorted(p.name for p in epochs_dir.iterdir())
        time.sleep(3)
        seen["daemon_alive_while_full"] = daemon.process.poll() is None
        status = subprocess.run([sys.executable, "-m", "animad", "--config", str(config), "status"],
                                capture_output=True, text=True)
        seen["status_while_full"] = (status.returncode, status.stdout + status.stderr)
        filler.unlink()  # the user frees some space
        failed = daemon.wait_status("full", Status.FAILED, Status.DONE)
        seen["failed_status"] = failed["status"]
        seen["error"] = failed["error"]
        seen["status_after"] = subprocess.run([sys.executable, "-m", "animad", "--config", str(config), "status"],
                                              capture_output=True, text=True).stdout
        # The user retries; the job resumes from its last state and finishes.
        retry = subprocess.run([sys.executable, "-m", "animad", "--config", str(config), "retry", "full"],
                               capture_output=True, text=True)
        seen["retry_output"] = retry.stdout + retry.stderr
        done = daemon.wait_status("full", Status.DONE, Status.FAILED)
        seen["final_status"] = done["status"]
        seen["final_error"] = done["error"]
        seen["epochs"] = [r["epoch"] for r in read_epochs_log(Path(done["job_dir"]) / "epochs.jsonl")]
        seen["epoch_files"] = sorted(p.name for p in epochs_dir.iterdir())
        seen["outbox_page"] = (Path(done["outbox_dir"]) / "index.html").is_file()
    finally:
        daemon.stop()
        seen["daemon_log"] = daemon.log_text()[-6000:]
        shutil.rmtree(state, ignore_errors=True)
    return seen


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]))))
