"""A real `animad run` with its dashboard on a free port, and plain HTTP to it (http.client: the path is
sent exactly as written, so traversal attempts reach the server un-normalised)."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path

from daemon_helpers import DaemonProcess, configure

from animad.config.daemon import load_daemon_config


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Dashboard:
    def __init__(self, config: Path, bind: str = "127.0.0.1", **settings):
        self.port = free_port()
        configure(config, dashboard={"port": self.port, "bind": bind}, **settings)
        self.state = load_daemon_config(config).dir("state")
        self.daemon = DaemonProcess(config).start()
        self.daemon.wait(lambda: (self.state / "dashboard.json").is_file(), what="the dashboard to listen")
        self.token = (self.state / "dashboard.token").read_text().strip()
        self.host = f"127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None, host: str | None = None,
                token: str | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            connection.putheader("Host", self.host if host is None else host)
            if token is not None:
                connection.putheader("X-Animad-Token", token)
            for key, value in (headers or {}).items():
                connection.putheader(key, value)
            if body is not None:
                connection.putheader("Content-Type", "application/json")
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def get_json(self, path: str) -> dict:
        status, _, body = self.request("GET", path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)

    def post(self, path: str, data: dict | None = None, token: str | None = "mine") -> tuple[int, dict]:
        status, _, body = self.request("POST", path, json.dumps(data or {}).encode(),
                                       token=self.token if token == "mine" else token)
        return status, json.loads(body) if body.startswith(b"{") else {"raw": body.decode()}

    def stop(self) -> None:
        self.daemon.stop()
