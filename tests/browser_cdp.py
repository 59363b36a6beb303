"""A headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`): stdlib only.

Chromium reads JSON commands, each ended by a NUL byte, from its fd 3 and writes answers and events
to its fd 4. `Browser` opens one page, evaluates JavaScript in it, clicks like a mouse (the real
input path: Input.dispatchMouseEvent at an element's centre) and takes screenshots. Used by the
dashboard's browser test and by bench/dashboard_screenshot.py.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars", "--remote-debugging-pipe"]
HANG_SECONDS = 120  # one protocol answer; a guard against a browser that died, never a speed budget


def chromium_path() -> str | None:
    return shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)


class Browser:
    def __init__(self, binary: str, profile: Path, width: int = 1280, height: int = 1000):
        commands_read, self.commands = os.pipe()
        self.answers, answers_write = os.pipe()

        def wire():  # in the child: our pipe ends become its fd 3 (commands in) and fd 4 (answers out)
            high_read, high_write = os.dup(commands_read), os.dup(answers_write)
            os.dup2(high_read, 3)
            os.dup2(high_write, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        self.process = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                                         "about:blank"], preexec_fn=wire, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=False)
        os.close(commands_read)
        os.close(answers_write)
        self.buffer, self.next_id, self.session = b"", 0, None
        self.width, self.height = width, height

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + HANG_SECONDS
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self.next_id:
                    if "error" in answer:
                        raise RuntimeError(f"{method}: {answer['error']}")
                    return answer.get("result", {})
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"no answer to {method} from chromium")
            ready, _, _ = select.select([self.answers], [], [], 1.0)
            if ready:
                chunk = os.read(self.answers, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed its DevTools pipe")
                self.buffer += chunk

    def open(self, url: str) -> "Browser":
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        self.send("Page.enable")
        self.send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                         "deviceScaleFactor": 1, "mobile": False})
        self.send("Page.navigate", {"url": url})
        return self

    def js(self, expression: str):
        """The value of a JavaScript expression in the page (JSON-able values only)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 1800, what: str = "") -> object:
        """Poll a JavaScript expression until it is truthy; its value. A hang guard, not a time budget."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.js(expression)
            except RuntimeError:
                value = None  # the page is still loading
            if value:
                return value
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what or expression}; page text:\n"
                             + str(self.js("document.body ? document.body.innerText : ''"))[-3000:])

    def click(self, selector: str) -> None:
        """A mouse click at the element's centre, as a person's would arrive."""
        box = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null; "
                      "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
                      "return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        if box is None:
            raise AssertionError(f"nothing matches {selector} to click")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                   "clickCount": 1})

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        params = {"format": "png"}
        if full_page:
            height = int(self.js("Math.max(document.documentElement.scrollHeight, document.body.scrollHeight)"))
            params.update(clip={"x": 0, "y": 0, "width": self.width, "height": max(height, 200), "scale": 1},
                          captureBeyondViewport=True)
        Path(path).write_bytes(base64.b64decode(self.send("Page.captureScreenshot", params)["data"]))
        return Path(path)

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False)
        except (RuntimeError, OSError):
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self.commands, self.answers):
            try:
                os.close(fd)
            except OSError:
                pass


def require_chromium() -> str:
    """Chromium's path; skips the test without one, unless ANIMAD_REQUIRE_BROWSER=1 (CI installed it)."""
    import pytest

    path = chromium_path()
    if path is None:
        if os.environ.get("ANIMAD_REQUIRE_BROWSER") == "1":
            pytest.fail("ANIMAD_REQUIRE_BROWSER=1 but chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path
