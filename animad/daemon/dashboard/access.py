"""The dashboard's safety rules, each a small function the server applies and the tests call by HTTP.

Any web page the user visits can send requests to 127.0.0.1, so:
- every state change is a POST carrying `X-Animad-Token`, whose value only the daemon's own page and
  whoever can read `<state>/dashboard.token` (mode 0600, new at every start) know;
- the Host header must name the dashboard itself, which defeats DNS rebinding (a hostile name
  resolved to 127.0.0.1 arrives with that name as its Host);
- /review/ serves files under the outbox only: the path is resolved (symlinks followed) and must
  still lie inside the outbox, so `..`, `%2e%2e` and a symlink out all end outside it and are refused;
- bound to anything but loopback, every page wants the token too (a cookie set by a login form).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import socket
from pathlib import Path

from animad.config.daemon import Daemon

TOKEN_FILE = "dashboard.token"

TOKEN_HEADER = "x-animad-token"
COOKIE = "animad_token"


def token_path(daemon: Daemon) -> Path:
    return daemon.dir("state") / TOKEN_FILE


def write_token(daemon: Daemon) -> str:
    """A new token in <state>/dashboard.token, readable by this user only (created 0600, never wider)."""
    path = token_path(daemon)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    partial = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an old file of that name with wider bits keeps them through O_TRUNC
        os.write(fd, f"{token}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, path)
    return token


def token_matches(given: str | None, token: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def is_loopback(bind: str) -> bool:
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


def allowed_hosts(daemon: Daemon, port: int) -> set[str]:
    """Every Host header value the dashboard answers: loopback names, the bound address, listed names."""
    names = {"127.0.0.1", "localhost", "[::1]"}
    bind = daemon.config.dashboard.bind
    if not ipaddress.ip_address(bind).is_unspecified:
        names.add(f"[{bind}]" if ":" in bind else bind)
    else:  # every interface: the machine's own name is how a phone on the network usually finds it
        host = socket.gethostname()
        names |= {host, f"{host}.local"}
    names |= {n.strip() for n in daemon.config.dashboard.hosts if n.strip()}
    allowed = set()
    for name in names:
        name = name.lower()
        if name.rsplit(":", 1)[-1].isdigit() and not name.endswith("]"):
            allowed.add(name)  # listed with its port
            continue
        allowed.add(f"{name}:{port}")
        if port == 80:
            allowed.add(name)
    return allowed


def host_allowed(host: str | None, allowed: set[str]) -> bool:
    return bool(host) and host.strip().lower() in allowed


def review_file(outbox: Path, name: str, inner: str) -> Path | None:
    """The file /review/<name>/<inner> means, or None unless it is a regular file inside the outbox.

    The server hands over the decoded path (so `%2e%2e` arrives as `..`); whatever the parts say, the
    resolved path must stay under the resolved outbox. Hidden names (a package being written,
    `.name.partial-*`) are not served either.
    """
    parts = [name, *[p for p in inner.split("/") if p]]
    if any(p in (".", "..") or p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
        return None
    root = Path(outbox).resolve()
    target = root.joinpath(*parts)
    if target.is_dir():
        target = target / "index.html"
    try:
        target = target.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a symlink loop
        return None
    if not target.is_relative_to(root) or not target.is_file():
        return None
    return target
