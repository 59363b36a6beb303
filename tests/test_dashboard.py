"""The dashboard over HTTP, on a real `animad run`: the same facts as `animad status`, its actions through
the daemon's loop, and every safety rule of issue 21 (token, Host, traversal, escaping, network bind).

The queue rows and files are made before the daemon starts (real SQLite, real safetensors files); the
daemon then serves them as it serves jobs it trained. The browser-side checks are in
test_dashboard_browser.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import save_file

from dashboard_helpers import Dashboard
from animad.config.daemon import load_daemon_config
from animad.daemon.queue import Queue, queue_path
from animad.demo.synthetic import write_daemon_config

EVIL = "<img src=x onerror=alert(1)>"
SECRET = "TOP-SECRET-OUTSIDE-THE-OUTBOX"


def lay_out_jobs(config, comfyui_loras=None):
    """A finished job with a review package and epoch files, a failed job with a hostile name, a held one."""
    daemon = load_daemon_config(config)
    state, outbox = daemon.dir("state"), daemon.dir("outbox")
    job = state / "jobs" / "1-cat"
    (job / "epochs").mkdir(parents=True)
    for epoch in (1, 2, 3):
        save_file({"lora_down": np.full((4, 2), epoch, np.float32)}, str(job / "epochs" / f"cat-e{epoch:04d}.safetensors"))
    (job / "epochs.jsonl").write_text("".join(json.dumps({"epoch": e, "step": 4 * e, "loss": 2.0 / e, "eval_loss": 1.5 / e,
                                                         "cooldown": e == 3}) + "\n" for e in (1, 2, 3)))
    (job / "job.resolved.yaml").write_text("name: cat\ntrigger: '@cat'\n")
    (job / "train.log").write_text("".join(f"line {i}\n" for i in range(100)) + "epoch 3: loss 0.667 \x1b[31mred\n")
    package = outbox / "cat"
    package.mkdir(parents=True)
    (package / "index.html").write_text("<!doctype html><title>cat</title><p>review of cat</p>")
    (package / "summary.json").write_text(json.dumps({
        "shortlist": [{"epoch": 2, "kind": "lowest", "file": "cat-e0002-lowest.safetensors", "reason": "lowest"},
                      {"epoch": 3, "kind": "cooled", "file": "cat-e0003-cooled.safetensors", "reason": "annealed"}],
        "try_first": {"epoch": 2, "reason": "the earliest epoch within noise of the lowest"}}))
    # What traversal would reach: a file beside the outbox, and links from inside the outbox to it.
    (config.parent / "secret.txt").write_text(SECRET)
    (package / "leak.txt").symlink_to(config.parent / "secret.txt")
    (package / "up").symlink_to(config.parent)
    (outbox / "linked-package").symlink_to(config.parent)
    queue = Queue(queue_path(daemon))
    queue.insert(1, name="cat", status="done", phase="select", job_dir=str(job), outbox_dir=str(package),
                 finished=time.time())
    queue.insert(2, name=EVIL, status="failed", error=f"<script>alert(2)</script> {EVIL} broke")
    queue.insert(3, name="later", status="queued", held=1)
    return job, package


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("dashboard")
    loras = root / "ComfyUI" / "models" / "loras"
    loras.mkdir(parents=True)
    (loras / "cat-e0002.safetensors").write_bytes(b"someone else's LoRA")
    config = write_daemon_config(root / "animad.yaml", tiny_models, comfyui_loras=str(loras))
    job, package = lay_out_jobs(config)
    dashboard = Dashboard(config)
    dashboard.root, dashboard.config, dashboard.loras, dashboard.package = root, config, loras, package
    yield dashboard
    dashboard.stop()


def test_api_status_is_animad_status_json(served):
    api = served.get_json("/api/status")
    cli = json.loads(subprocess.run([sys.executable, "-m", "animad", "--config", str(served.config), "status", "--json"],
                                    capture_output=True, text=True, check=True).stdout)
    assert api == cli
    assert api["daemon"]["dashboard"] == f"http://127.0.0.1:{served.port}/"
    assert [j["name"] for j in api["jobs"]] == ["cat", EVIL, "later"]
    assert [j["shown"]["status"] for j in api["jobs"]] == ["done", "failed", "queued (held)"]
    text = subprocess.run([sys.executable, "-m", "animad", "--config", str(served.config), "status"],
                          capture_output=True, text=True, check=True).stdout
    assert f"dashboard: http://127.0.0.1:{served.port}/" in text  # `animad status` says where it is


def test_job_view_has_curve_log_settings_and_review(served):
    job = served.get_json("/api/jobs/1")
    assert [(p["epoch"], p["cooldown"]) for p in job["curve"]] == [(1, False), (2, False), (3, True)]
    assert job["curve"][1]["eval_loss"] == pytest.approx(0.75)
    assert job["log"][-1] == "epoch 3: loss 0.667 \\x1b[31mred"  # the tail, control characters made visible
    assert len(job["log"]) == 40 and "trigger: '@cat'" in job["settings"]
    assert job["epoch_files"] == [1, 2, 3]
    assert job["review"]["url"] == "/review/cat/"
    assert job["review"]["try_first"]["epoch"] == 2 and [p["epoch"] for p in job["review"]["shortlist"]] == [2, 3]


def test_state_changes_need_the_token(served):
    for verb in ("pause", "resume", "cancel", "retry", "keep"):
        assert served.post(f"/api/jobs/3/{verb}", {"epoch": 1}, token=None)[0] == 403
        assert served.post(f"/api/jobs/3/{verb}", {"epoch": 1}, token="not-the-token")[0] == 403
        status, _, _ = served.request("GET", f"/api/jobs/3/{verb}", token=served.token)
        assert status == 405  # a state change is a POST, never a GET a link or an <img> could send
    held = served.daemon.queue.get(3)
    assert held["held"] == 1 and held["status"] == "queued"  # nothing was done
    mode = stat.S_IMODE(os.stat(served.state / "dashboard.token").st_mode)
    assert mode == 0o600


def test_actions_go_through_the_rules(served):
    status, answer = served.post("/api/jobs/3/resume")
    assert status == 200 and answer["message"].startswith("job 3 (later)")
    assert served.daemon.queue.get(3)["held"] == 0
    status, answer = served.post("/api/jobs/3/pause")
    assert status == 200 and "is held" in answer["message"] and served.daemon.queue.get(3)["held"] == 1
    status, answer = served.post("/api/jobs/1/retry")  # the CLI's rule: only failed or cancelled jobs
    assert status == 409 and "only failed or cancelled jobs can be retried" in answer["error"]
    assert served.post("/api/jobs/99/pause")[0] == 409
    assert served.post("/api/jobs/3/explode")[0] == 404


def test_keep_copies_under_a_descriptive_name_and_never_overwrites(served):
    status, answer = served.post("/api/jobs/1/keep", {"epoch": 2})
    assert status == 200, answer
    kept = served.package / "kept" / "cat-e0002.safetensors"
    source = served.root / "state" / "jobs" / "1-cat" / "epochs" / "cat-e0002.safetensors"
    assert kept.read_bytes() == source.read_bytes()
    # ComfyUI's folder already had a different file of that name: it is untouched, the copy sits beside it.
    assert (served.loras / "cat-e0002.safetensors").read_bytes() == b"someone else's LoRA"
    assert (served.loras / "cat-e0002-2.safetensors").read_bytes() == source.read_bytes()
    status, answer = served.post("/api/jobs/1/keep", {"epoch": 2})
    assert status == 200 and answer["message"].count("already kept") == 2
    assert sorted(p.name for p in served.loras.iterdir()) == ["cat-e0002-2.safetensors", "cat-e0002.safetensors"]
    status, answer = served.post("/api/jobs/1/keep", {"epoch": 7})
    assert status == 409 and "epoch 7 has no file" in answer["error"]
    assert served.post("/api/jobs/1/keep", {"epoch": "2; rm -rf"})[0] == 400
    assert served.get_json("/api/jobs/1")["review"]["kept"] == ["cat-e0002.safetensors"]


def test_foreign_host_is_refused(served):
    for host in ("evil.example", f"evil.example:{served.port}", f"127.0.0.1.nip.io:{served.port}", ""):
        for path in ("/", "/api/status", "/review/cat/index.html", "/static/dashboard.js"):
            status, _, body = served.request("GET", path, host=host)
            assert status == 403, (host, path)
            assert b"review of cat" not in body and served.token.encode() not in body
    status, _, _ = served.request("POST", "/api/jobs/3/resume", b"{}", host="evil.example", token=served.token)
    assert status == 403 and served.daemon.queue.get(3)["held"] == 1
    assert served.request("GET", "/api/status", host=f"localhost:{served.port}")[0] == 200


def test_review_serves_only_files_under_the_outbox(served):
    status, headers, body = served.request("GET", "/review/cat/")
    assert status == 200 and b"review of cat" in body and "script-src" not in headers["content-security-policy"]
    assert "default-src 'none'" in headers["content-security-policy"]
    assert served.request("GET", "/review/cat")[0] == 307  # to /review/cat/, so its relative links work
    attempts = ["/review/cat/../../secret.txt", "/review/cat/../../animad.yaml", "/review/../secret.txt",
                "/review/cat/%2e%2e/%2e%2e/secret.txt", "/review/cat/%2E%2E/%2E%2E/animad.yaml",
                "/review/%2e%2e/secret.txt", "/review/cat/..%2f..%2fsecret.txt", "/review/cat/%2e%2e%2f%2e%2e%2fsecret.txt",
                "/review/cat/leak.txt", "/review/cat/up/secret.txt", "/review/linked-package/secret.txt",
                "/review/cat/%00secret.txt", "/review/cat/..%5c..%5csecret.txt",
                f"/review/cat/{served.root}/secret.txt", f"/review/cat//{served.root}/secret.txt"]
    for path in attempts:
        status, _, body = served.request("GET", path)
        assert status in (400, 404), (path, status)
        assert SECRET.encode() not in body and b"default_model" not in body, path


def test_user_text_is_data_never_markup(served):
    status, headers, page = served.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"onerror" not in page and b"alert(" not in page  # the page is static: names arrive as JSON
    assert "script-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
    status, headers, body = served.request("GET", "/api/status")
    assert headers["content-type"] == "application/json" and headers["x-content-type-options"] == "nosniff"
    assert json.loads(body)["jobs"][1]["name"] == EVIL  # as data, for the page to set as text
    assert served.token.encode() in page  # the page gets the token from the server, in the page itself


def test_bound_to_the_network_every_page_needs_the_token(tmp_path, tiny_models):
    config = write_daemon_config(tmp_path / "animad.yaml", tiny_models)
    dashboard = Dashboard(config, bind="0.0.0.0")
    try:
        assert "DASHBOARD OPEN TO THE NETWORK" in dashboard.daemon.log_text()
        status, headers, body = dashboard.request("GET", "/")
        assert status == 303 and headers["location"] == "/login" and dashboard.token.encode() not in body
        assert dashboard.request("GET", "/api/status")[0] == 403
        assert dashboard.request("GET", "/review/x/")[0] == 303
        status, _, body = dashboard.request("GET", "/login")
        assert status == 200 and dashboard.token.encode() not in body
        status, _, _ = dashboard.request("POST", "/login", b"token=wrong",
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 403
        status, headers, _ = dashboard.request("POST", "/login", f"token={dashboard.token}".encode(),
                                               headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 303 and "httponly" in headers["set-cookie"].lower()
        cookie = headers["set-cookie"].split(";")[0]
        assert dashboard.request("GET", "/api/status", headers={"Cookie": cookie})[0] == 200
        assert dashboard.request("GET", "/api/status", token=dashboard.token)[0] == 200
        assert dashboard.request("GET", "/api/status", host=f"evil.example:{dashboard.port}",
                                 token=dashboard.token)[0] == 403  # the Host rule still holds
    finally:
        dashboard.stop()


def test_port_zero_turns_it_off_and_a_taken_port_does_not_stop_the_daemon(tmp_path, tiny_models):
    import socket

    config = write_daemon_config(tmp_path / "animad.yaml", tiny_models)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        from daemon_helpers import DaemonProcess, configure

        configure(config, dashboard={"port": taken.getsockname()[1]})
        daemon = DaemonProcess(config).start()
        try:
            daemon.wait(lambda: "dashboard off: cannot listen" in daemon.log_text(), what="the dashboard's error")
            assert daemon.process.poll() is None  # the daemon runs on without it
            assert not (tmp_path / "state" / "dashboard.json").exists()
        finally:
            daemon.stop()
    configure(config, dashboard={"port": 0})
    daemon = DaemonProcess(config).start()
    try:
        daemon.wait(lambda: "animad daemon started" in daemon.log_text(), what="the daemon to start")
        assert "dashboard" not in daemon.log_text().split("animad daemon started")[-1].split("\n")[0]
        status = subprocess.run([sys.executable, "-m", "animad", "--config", str(config), "status"],
                                capture_output=True, text=True, check=True).stdout
        assert "dashboard:" not in status
    finally:
        daemon.stop()


def test_animad_keep_is_the_same_action(served):
    result = subprocess.run([sys.executable, "-m", "animad", "--config", str(served.config), "keep", "cat", "1"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (served.package / "kept" / "cat-e0001.safetensors").is_file()
    assert (served.loras / "cat-e0001.safetensors").is_file()  # no file of that name there before: the plain name
    refused = subprocess.run([sys.executable, "-m", "animad", "--config", str(served.config), "keep", "later", "1"],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "an epoch is kept from a finished job's review" in refused.stderr


def test_a_request_the_loop_never_reached_is_withdrawn_not_run_late():
    import threading

    from animad.daemon.dashboard.mailbox import Busy, Mailbox

    mailbox, ran = Mailbox(threading.Event()), []
    with pytest.raises(Busy):
        mailbox.ask(lambda queue: ran.append(queue), timeout=0.01)  # no loop is serving it
    mailbox.serve("the loop's queue")
    assert ran == []  # withdrawn: the person was told nothing was done, so nothing is
    answer = {}
    asking = threading.Thread(target=lambda: answer.update(value=mailbox.ask(lambda queue: f"done with {queue}")))
    asking.start()
    while not answer:
        mailbox.serve("the loop's queue")
        asking.join(0.01)
    assert answer["value"] == "done with the loop's queue"
