"""The dashboard's web app (Starlette) and its server (uvicorn), run in a thread of `animad run`.

It reads: the queue (its own SQLite connection per thread; WAL lets it read while the loop writes),
the job files and the outbox. It writes nothing to the queue: pause, resume, cancel and retry go to
the loop through the mailbox. Starlette and uvicorn are imported when the dashboard starts, so no
other command pays for them. Every request passes `guard` first (Host allow-list, the token on pages
when bound beyond loopback); every state change is a POST with the token header.
"""

from __future__ import annotations

import html
import json
import logging
import socket
import threading
import time
import urllib.parse
from pathlib import Path

from animad.config.daemon import Daemon
from animad.daemon import actions
from animad.daemon.dashboard import access
from animad.daemon.dashboard.job_view import job_view
from animad.daemon.dashboard.mailbox import Busy, Mailbox
from animad.daemon.queue import Queue, queue_path
from animad.daemon.status import DASHBOARD_FILE, row_figures, take_snapshot
from animad.errors import UserError
from animad.fsutil import write_atomic
from animad.safe_text import safe

log = logging.getLogger("animad.dashboard")

STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
VERBS = ("pause", "resume", "cancel", "retry")
BODY_BYTES = 4096  # an action's body is a few bytes of JSON; nothing bigger is read
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# The review packages are static pages with no script; they keep none here either.
REVIEW_CSP = ("default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; frame-ancestors 'none'; "
              "base-uri 'none'; form-action 'none'")
SAFE_HEADERS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "no-referrer",
                "cross-origin-resource-policy": "same-origin", "cache-control": "no-store"}


class Dashboard:
    """The listening socket, the token and the server thread; `stop` ends them."""

    def __init__(self, daemon: Daemon, mailbox: Mailbox):
        self.daemon, self.mailbox = daemon, mailbox
        self.settings = daemon.config.dashboard
        self.server = None
        self.thread: threading.Thread | None = None
        self.url: str | None = None

    def start(self) -> None:
        """Bind (OSError when the port is taken), write the token, serve in a thread; then say where."""
        import uvicorn

        bind = self.settings.bind
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        sock = socket.create_server((bind, self.settings.port), family=family)
        port = sock.getsockname()[1]
        token = access.write_token(self.daemon)
        pages_need_token = not access.is_loopback(bind)
        app = build_app(self.daemon, self.mailbox, token, access.allowed_hosts(self.daemon, port), pages_need_token)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", ws="none", http="h11",
                                loop="asyncio", server_header=False, proxy_headers=False, timeout_keep_alive=5)
        logging.getLogger("uvicorn").setLevel(logging.WARNING)  # its start-up chatter is not the daemon's news
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True,
                                       name="animad-dashboard")
        self.thread.start()
        shown_host = "127.0.0.1" if access.is_loopback(bind) or bind in ("0.0.0.0", "::") else bind
        self.url = f"http://{shown_host}:{port}/"
        write_atomic(self.daemon.dir("state") / DASHBOARD_FILE,
                     json.dumps({"url": self.url, "bind": bind, "port": port,
                                 "pages_need_token": pages_need_token}).encode(), durable=False)
        if pages_need_token:
            log.warning("DASHBOARD OPEN TO THE NETWORK: listening on %s port %d. Every page asks for the token "
                        "in %s; anyone who has it can pause, cancel and download your jobs. Allowed names: "
                        "dashboard.hosts in animad.yaml (and this machine's name). Use bind: 127.0.0.1 to keep "
                        "it on this machine.", bind, port, access.token_path(self.daemon))
        log.info("dashboard: %s (scripts send the token in %s as X-Animad-Token)", self.url,
                 access.token_path(self.daemon))

    def stop(self) -> None:
        (self.daemon.dir("state") / DASHBOARD_FILE).unlink(missing_ok=True)
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)


def start_dashboard(daemon: Daemon, mailbox: Mailbox) -> Dashboard | None:
    """The running dashboard, or None when it is off (port: 0) or could not start (said in the log)."""
    (daemon.dir("state") / DASHBOARD_FILE).unlink(missing_ok=True)  # a crashed daemon's file says nothing now
    if not daemon.config.dashboard.port:
        return None
    dashboard = Dashboard(daemon, mailbox)
    try:
        dashboard.start()
    except ImportError as error:
        log.error("dashboard off: %s is not installed (pip install -e . installs it); the daemon runs without it",
                  error.name)
        return None
    except OSError as error:
        log.error("dashboard off: cannot listen on %s port %d (%s); set dashboard.port in animad.yaml to a free "
                  "port, or 0 to turn it off. The daemon runs without it.", daemon.config.dashboard.bind,
                  daemon.config.dashboard.port, error.strerror or error)
        dashboard.stop()
        return None
    return dashboard


def build_app(daemon: Daemon, mailbox: Mailbox, token: str, hosts: set[str], pages_need_token: bool):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
    from starlette.routing import Route

    queue = Queue(queue_path(daemon))  # one connection per server thread, reads only
    outbox = daemon.dir("outbox")
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    login_page = (STATIC / "login.html").read_text(encoding="utf-8")

    def json_response(data, status: int = 200) -> Response:
        return Response(json.dumps(data, default=str), status_code=status, media_type="application/json")

    def refuse(status: int, words: str) -> Response:
        return json_response({"ok": False, "error": words}, status)

    def signed(request: Request) -> bool:
        return access.token_matches(request.headers.get(access.TOKEN_HEADER), token)

    def index(request: Request) -> Response:
        return HTMLResponse(page.replace("{{TOKEN}}", html.escape(token, quote=True)))

    def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return refuse(404, "no such file")
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name])

    def status(request: Request) -> Response:
        return json_response(take_snapshot(daemon, queue).as_json())

    def job(request: Request) -> Response:
        row = queue.get(request.path_params["job"])
        if row is None:
            return refuse(404, f"no job {request.path_params['job']}")
        return json_response(job_view(row, row_figures(row, time.time())))

    def act(request: Request) -> Response:
        if not signed(request):
            return refuse(403, "this needs the X-Animad-Token header (the dashboard page sends it)")
        job_id, verb = request.path_params["job"], request.path_params["verb"]
        if verb not in VERBS:
            return refuse(404, f"no action '{safe(verb)}'; one of {', '.join(VERBS)}")

        def in_the_loop(loop_queue: Queue):
            row = loop_queue.get(job_id)
            if row is None:
                raise UserError(f"no job {job_id}")
            if verb == "resume":
                return actions.resume(daemon, loop_queue, row)
            return getattr(actions, verb)(loop_queue, row)

        return answer(lambda: mailbox.ask(in_the_loop))

    async def keep(request: Request) -> Response:
        if not signed(request):
            return refuse(403, "this needs the X-Animad-Token header (the dashboard page sends it)")
        body = await read_body(request)
        try:
            epoch = json.loads(body or b"{}").get("epoch")
        except (ValueError, AttributeError):
            epoch = None
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            return refuse(400, 'send {"epoch": N}, the epoch to keep')
        row = queue.get(request.path_params["job"])
        if row is None:
            return refuse(404, f"no job {request.path_params['job']}")
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(answer, lambda: actions.keep_epoch(daemon, row, epoch))

    def answer(call) -> Response:
        try:
            done = call()
        except UserError as error:
            return refuse(409, str(error))
        except Busy:
            return refuse(503, "the daemon is busy (accepting a folder?) and did not get to it; nothing was done, "
                               "try again")
        except OSError as error:
            return refuse(500, f"{error.strerror or error}: {error.filename or ''}")
        return json_response({"ok": True, "message": done.message, "note": done.note})

    def review(request: Request) -> Response:
        name, inner = request.path_params["name"], request.path_params.get("path", "")
        if inner == "" and not request.url.path.endswith("/"):
            return RedirectResponse(f"/review/{urllib.parse.quote(name, safe='')}/", status_code=307)
        path = access.review_file(outbox, name, inner)
        if path is None:
            return refuse(404, "not a file of a review package")
        return FileResponse(path, headers={"content-security-policy": REVIEW_CSP}, content_disposition_type="inline")

    def login(request: Request) -> Response:
        return HTMLResponse(login_page)

    async def login_post(request: Request) -> Response:
        form = urllib.parse.parse_qs((await read_body(request)).decode("utf-8", errors="replace"))
        if not access.token_matches((form.get("token") or [""])[0].strip(), token):
            return HTMLResponse(login_page.replace("<!--WRONG-->", "<p class='error'>That is not the token.</p>"),
                                status_code=403)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(access.COOKIE, token, httponly=True, samesite="strict", path="/")
        return response

    routes = [Route("/", index), Route("/static/{name}", static), Route("/api/status", status),
              Route("/api/jobs/{job:int}", job), Route("/api/jobs/{job:int}/keep", keep, methods=["POST"]),
              Route("/api/jobs/{job:int}/{verb}", act, methods=["POST"]),
              Route("/review/{name}", review), Route("/review/{name}/{path:path}", review),
              Route("/login", login), Route("/login", login_post, methods=["POST"])]
    app = Starlette(routes=routes)
    return Guard(app, token, hosts, pages_need_token)


async def read_body(request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > BODY_BYTES:
            break
    return body[:BODY_BYTES]


class Guard:
    """ASGI middleware before every route: the Host allow-list, the token on pages off loopback, safe headers."""

    def __init__(self, app, token: str, hosts: set[str], pages_need_token: bool):
        self.app, self.token, self.hosts, self.pages_need_token = app, token, hosts, pages_need_token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not access.host_allowed(headers.get("host"), self.hosts):
            return await plain(send, 403, "This dashboard answers only to its own names (Host header refused). "
                                          "Open it as http://127.0.0.1:<port>/, or list the name under "
                                          "dashboard.hosts in animad.yaml.")
        path = scope["path"]
        if self.pages_need_token and not path.startswith("/login") and not self.signed(headers):
            if path.startswith("/api/"):
                return await plain(send, 403, "this needs the token (X-Animad-Token, or log in at /login)")
            return await redirect(send, "/login")
        policy = REVIEW_CSP if path.startswith("/review/") else PAGE_CSP

        async def send_safe(message):
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in {**SAFE_HEADERS, "content-security-policy": policy}.items()
                         if k.encode() not in have]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return await self.app(scope, receive, send_safe)

    def signed(self, headers: dict) -> bool:
        if access.token_matches(headers.get(access.TOKEN_HEADER), self.token):
            return True
        for part in headers.get("cookie", "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == access.COOKIE and access.token_matches(value, self.token):
                return True
        return False


async def plain(send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                            *[(k.encode(), v.encode()) for k, v in SAFE_HEADERS.items()]]})
    await send({"type": "http.response.body", "body": body})


async def redirect(send, location: str) -> None:
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", location.encode()), (b"content-length", b"0"),
                            *[(k.encode(), v.encode()) for k, v in SAFE_HEADERS.items()]]})
    await send({"type": "http.response.body", "body": b""})
