"""Messages a user reads when something is wrong: refused links, odd model paths, kills, broken files.

Each test makes the real situation (real links, real folders, real processes) and reads the words.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from animad.config.daemon import load_daemon_config
from animad.demo.synthetic import make_dataset, tiny_job
from animad.intake.check import check_folder
from daemon_helpers import HANG_SECONDS

SECRET = "aws_secret_access_key: AKIA-very-secret\n"


def test_job_yaml_and_caption_linked_outside_are_refused_unread(tmp_path, daemon_config):
    outside = tmp_path / "home"
    outside.mkdir()
    (outside / "credentials").write_text(SECRET)
    (outside / "caption.txt").write_text("AKIA-caption-secret")
    folder = make_dataset(tmp_path / "ds", count=2, job=None)
    (folder / "job.yaml").unlink(missing_ok=True)
    os.symlink(outside / "credentials", folder / "job.yaml")
    image = sorted(folder.glob("*.png"))[0]
    image.with_suffix(".txt").unlink(missing_ok=True)
    os.symlink(outside / "caption.txt", image.with_suffix(".txt"))

    result = check_folder(folder, load_daemon_config(daemon_config))

    report = result.report()
    assert not result.ok
    refused = {p.file for p in result.problems.errors if "symlink points outside" in p.message}
    assert refused == {"job.yaml", image.with_suffix(".txt").name}, report
    assert "aws_secret_access_key" not in report and "AKIA" not in report
    assert "unknown key" not in report


def test_a_folder_or_a_device_as_model_path_says_what_it_is(tmp_path, daemon_config):
    folder = make_dataset(tmp_path / "ds", count=2, job=tiny_job())
    models = tmp_path / "dit-folder"
    models.mkdir()
    job = yaml.safe_load((folder / "job.yaml").read_text()) or {}
    job["model_files"] = {"dit": str(models), "vae": "/dev/zero"}
    (folder / "job.yaml").write_text(yaml.safe_dump(job))

    result = check_folder(folder, load_daemon_config(daemon_config))

    by_field = {p.where: p.message for p in result.problems.errors}
    assert "is a folder" in by_field["model_files.dit"] and str(models) in by_field["model_files.dit"]
    assert "a device" in by_field["model_files.vae"] and "/dev/zero" in by_field["model_files.vae"]
    assert not any("not found" in m for m in by_field.values()), result.report()


def killed_sleeper(oom_counter: Path | None = None):
    """A real process ended by SIGKILL; returns its exit code and the OOM watch taken when it started."""
    import signal
    import subprocess
    import sys

    from animad.daemon.runner import OomWatch, read_oom_kills

    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    watch = OomWatch.of(process.pid) if oom_counter is None else OomWatch(oom_counter, read_oom_kills(oom_counter))
    process.send_signal(signal.SIGKILL)
    return process.wait(timeout=HANG_SECONDS), watch


def test_a_sigkill_is_blamed_on_the_oom_killer_only_when_the_kernel_counted_one(tmp_path):
    from animad.daemon.runner import failure_reason

    row = {"id": 7, "error": None}
    code, watch = killed_sleeper()
    plain = failure_reason(code, row, "", oom_killed=watch.killed_since())
    assert "killed by SIGKILL" in plain
    assert "from the kernel's out-of-memory killer" not in plain  # nothing ran out of memory here
    assert ("not the out-of-memory killer" in plain) or ("possible causes" in plain)

    # A cgroup counter file (same format as memory.events) that rises while the job runs.
    counter = tmp_path / "memory.events"
    counter.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    code, watch = killed_sleeper(counter)
    assert "not the out-of-memory killer" in failure_reason(code, row, "", oom_killed=watch.killed_since())
    counter.write_text("low 0\nhigh 0\nmax 9\noom 2\noom_kill 2\n")
    blamed = failure_reason(code, row, "", oom_killed=watch.killed_since())
    assert "from the kernel's out-of-memory killer" in blamed and "batch_size" in blamed

    unknown = failure_reason(code, row, "", oom_killed=None)
    assert "possible causes" in unknown and "kill -9" in unknown


def write_job(folder: Path, **changes) -> None:
    job = yaml.safe_load((folder / "job.yaml").read_text()) or {}
    for key, value in changes.items():
        job.setdefault(key, {}).update(value) if isinstance(value, dict) else job.__setitem__(key, value)
    (folder / "job.yaml").write_text(yaml.safe_dump(job))


def test_check_on_a_broken_dit_gives_the_full_report(tmp_path, daemon_config, tiny_models):
    folder = make_dataset(tmp_path / "ds", count=2, job=tiny_job())
    broken = tmp_path / "dit.safetensors"
    good = tiny_models["dit"].read_bytes()
    broken.write_bytes(good[:8] + b"{not json at all" + good[24:4096])  # a header that cannot be read
    write_job(folder, model_files={"dit": str(broken)}, network={"dim": 4, "blocks": [999]})
    (folder / "stray.bin").write_bytes(b"x")

    result = check_folder(folder, load_daemon_config(daemon_config))  # must not raise

    report = result.report()
    assert not result.ok
    assert any(p.where == "model files" for p in result.problems.errors), report
    assert any(p.file == "stray.bin" for p in result.problems.warnings), report  # the rest is still there


def test_init_from_with_text_encoder_modules_is_caught_by_check(tmp_path, daemon_config):
    import torch
    from safetensors.torch import save_file

    from animad.anima.lora_names import PREFIXES, TEXT_ENCODER

    folder = make_dataset(tmp_path / "ds", count=2, job=tiny_job())
    module = f"{PREFIXES[TEXT_ENCODER]}_layers_0_mlp_gate_proj"
    save_file({f"{module}.lora_down.weight": torch.zeros(4, 8), f"{module}.lora_up.weight": torch.zeros(8, 4),
               f"{module}.alpha": torch.tensor(4.0)}, str(folder / "old.safetensors"))
    write_job(folder, network={"dim": 4, "init_from": "old.safetensors"}, data={"shuffle_captions": False})
    daemon = load_daemon_config(daemon_config)

    result = check_folder(folder, daemon)
    problem = [p for p in result.problems.errors if p.where == "network.init_from"]
    assert problem and "text-encoder module" in problem[0].message, result.report()
    assert "train_text_encoder: true" in problem[0].fix

    write_job(folder, network={"train_text_encoder": True})
    assert not [p for p in check_folder(folder, daemon).problems.errors if p.where == "network.init_from"]


def test_an_unwritable_outbox_gives_one_line_naming_the_folder(tmp_path):
    import stat

    import pytest

    from animad.errors import UserError
    from animad.select.package import write_review_package
    from package_helpers import build_review

    review, _, _ = build_review(tmp_path)
    blocked = tmp_path / "outbox-is-a-file"
    blocked.write_text("the user's file, not a folder")
    with pytest.raises(UserError) as caught:
        write_review_package(blocked / "cat", review)
    message = str(caught.value)
    assert str(blocked) in message and "writable" in message and "\n" not in message
    assert blocked.read_text() == "the user's file, not a folder"

    if os.geteuid() != 0:  # root writes through permission bits; the file case above still ran
        readonly = tmp_path / "outbox"
        readonly.mkdir()
        readonly.chmod(stat.S_IRUSR | stat.S_IXUSR)
        try:
            with pytest.raises(UserError, match="chmod u\\+w"):
                write_review_package(readonly / "cat", review)
        finally:
            readonly.chmod(stat.S_IRWXU)


def unit_settings(path: Path) -> dict[str, list[str]]:
    """The [Service] settings of a systemd unit file, each key with all its values in order."""
    settings: dict[str, list[str]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_systemd_unit_is_hardened_but_keeps_the_gpu_and_its_folders():
    unit = Path(__file__).resolve().parent.parent / "systemd" / "animad.service"
    settings = unit_settings(unit)
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
                       "ProtectControlGroups": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
                       "RestrictRealtime": "yes", "UMask": "0077", "PrivateDevices": "no"}.items():
        assert settings.get(key) == [value], f"{unit}: {key}={value} is missing"
    assert "%h/animad" in " ".join(settings["ReadWritePaths"])  # state, inbox and outbox stay writable
    assert any(v.startswith("char-nvidia") for v in settings["DeviceAllow"])  # the GPU stays usable
    assert "MemoryDenyWriteExecute" not in settings  # torch.compile and CUDA's JIT need it off
    # Every hardening line says why: the line above each key is a comment or another key of its block.
    lines = unit.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ProtectSystem="))
    for index in range(start, len(lines)):
        if lines[index].startswith("["):
            break
        if lines[index] and not lines[index].startswith("#"):
            block_start = index
            while block_start > 0 and lines[block_start - 1] and not lines[block_start - 1].startswith("#"):
                block_start -= 1
            assert lines[block_start - 1].startswith("#"), f"{unit}: '{lines[index]}' has no comment"


# -- words that say what is true (issue 11, defect 8; issue 13) ------------------------------------------

def animad(config: Path, *args) -> "subprocess.CompletedProcess":
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "animad", "--config", str(config), *args], capture_output=True,
                          text=True, timeout=HANG_SECONDS, cwd=config.parent)


def test_a_job_folder_deleted_while_paused_says_so_and_retry_does_not_blame_acceptance(daemon_config):
    import datetime as dt
    import shutil

    from animad.daemon.states import Status
    from daemon_helpers import ServiceInProcess, configure, drop

    configure(daemon_config, windows=["22:00-07:00"])
    inbox = load_daemon_config(daemon_config).dir("inbox")
    service = ServiceInProcess(daemon_config, dt.datetime(2026, 3, 2, 12, 0))  # window closed
    try:
        drop(make_dataset(daemon_config.parent / "staging" / "gone", job=tiny_job()), inbox)
        row = service.wait_status("gone", Status.QUEUED)
        service.queue.update(row["id"], status=Status.PAUSED, resume_first=1)
        shutil.rmtree(row["job_dir"])  # the user tidies up by hand
        shown = animad(daemon_config, "status").stdout
        assert "its job folder is gone" in shown and "resumes at" not in shown, shown
        service.now = dt.datetime(2026, 3, 2, 23, 0)  # the window opens: the daemon would resume it
        failed = service.wait_status("gone", Status.FAILED)
    finally:
        service.close()
    assert "job.resolved.yaml" not in failed["error"]
    assert f"its job folder {row['job_dir']} is gone" in failed["error"]
    assert "drop the dataset folder into the inbox" in failed["error"]
    assert f"animad cancel {row['id']}" in failed["error"]
    retried = animad(daemon_config, "retry", str(row["id"]))
    assert retried.returncode != 0 and "never got a job folder" not in retried.stderr
    assert "is gone" in retried.stderr and "drop the dataset folder" in retried.stderr


def test_resume_says_when_the_job_really_restarts(daemon_config, tmp_path):
    import datetime as dt
    import subprocess
    import sys

    from animad.daemon.queue import Queue
    from animad.daemon.states import Status
    from daemon_helpers import configure

    def released(windows) -> str:
        configure(daemon_config, windows=windows)
        job = queue.add("cat", "/nowhere/cat")
        queue.update(job, status=Status.PAUSED, held=1)
        result = animad(daemon_config, "resume", str(job))
        assert result.returncode == 0, result.stderr
        return result.stdout

    daemon = load_daemon_config(daemon_config)
    queue = Queue(daemon.dir("state") / "animad.sqlite")
    assert "once the daemon runs" in released(["always"])  # no daemon: nothing restarts by itself
    # A live process holds the pid file, as a running daemon would.
    sleeper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        (daemon.dir("state") / "daemon.pid").write_text(f"{sleeper.pid}\n")
        assert "restarts now" in released(["always"])
        later = dt.datetime.now() + dt.timedelta(hours=2)  # a window that opens in two hours: closed now
        closed = released([f"{later:%H:%M}-{later + dt.timedelta(minutes=1):%H:%M}"])
        assert "in the next window" in closed and "--now" in closed
    finally:
        sleeper.stdin.close()
        sleeper.wait(timeout=HANG_SECONDS)


def test_run_refuses_to_start_without_its_model_files(daemon_config):
    data = yaml.safe_load(daemon_config.read_text())
    name = data["default_model"]
    data["models"][name]["dit"] = str(daemon_config.parent / "nowhere" / "dit.safetensors")
    daemon_config.write_text(yaml.safe_dump(data))
    result = animad(daemon_config, "run", "--once")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"models.{name}.dit: {daemon_config.parent / 'nowhere' / 'dit.safetensors'} (not found)" in result.stderr
    assert "--no-models-check" in result.stderr and "text_encoder" not in result.stderr
    assert not (load_daemon_config(daemon_config).dir("state") / "daemon.pid").exists()
    started = animad(daemon_config, "run", "--once", "--no-models-check")
    assert started.returncode == 0 and "animad daemon stopped" in started.stdout, started.stdout + started.stderr


def test_run_without_any_config_points_at_animad_init(tmp_path):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ANIMAD_CONFIG"}
    result = subprocess.run([sys.executable, "-m", "animad", "run", "--once"], capture_output=True, text=True,
                            timeout=HANG_SECONDS, cwd=tmp_path, env={**env, "HOME": str(tmp_path)})
    assert result.returncode == 2 and "animad init" in result.stderr and "not found" in result.stderr, result.stderr
