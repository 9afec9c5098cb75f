"""Headless Chromium driven over the DevTools protocol on a pipe, without any dependency.

Used by tests/test_report_browser.py to open a generated ``report.html`` as a user's browser would,
measure it and take a screenshot. Chromium is Debian's package (``apt-get install chromium``; `.ci/run`
installs it when missing).

Why the DevTools protocol over ``--remote-debugging-pipe``, and not ``--screenshot`` / ``--dump-dom``:
the pipe needs no port (nothing listens, nothing can collide with another test or be reached from
outside) and no WebSocket client (messages are JSON separated by a NUL byte on fds 3 and 4); the page
is measured by the browser itself (``Runtime.evaluate``) after its load event and after every image has
decoded, not after a guessed virtual-time budget, and without injecting a script into the page under
test; the viewport is set exactly (``Emulation.setDeviceMetricsOverride``), where ``--window-size``
includes whatever the headless window's frame takes; and one browser process serves both the
measurements and the screenshot.

Command line (a screenshot of a report, e.g. for the README)::

    python tests/chromium.py results/report.html report.png [--width 1280]
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional

#: the flags the page is opened with: no GPU, no network of its own (the machine has none), nothing
#: from an earlier profile (a fresh --user-data-dir is added per browser)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars"]

#: executables tried, in order, when CHROMIUM is not set
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> Optional[str]:
    """The Chromium executable: $CHROMIUM, else the first of NAMES on PATH; None when there is none."""
    env = os.environ.get("CHROMIUM")
    if env:
        return shutil.which(env) or (env if Path(env).is_file() else None)
    return next((p for p in map(shutil.which, NAMES) if p), None)


class BrowserError(RuntimeError):
    pass


def _high(fd: int) -> int:
    """``fd`` moved to a number above 9 (so redirecting it onto 3 or 4 cannot clobber it)."""
    import fcntl

    new = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return new


class Chromium:
    """One headless Chromium process and one page, spoken to over the DevTools pipe.

    ``with Chromium() as b: b.open(path, width=1280); b.evaluate("..."); b.screenshot(png)``."""

    def __init__(self, executable: Optional[str] = None, timeout: float = 60.0):
        self.exe = executable or find_chromium()
        if not self.exe:
            raise BrowserError(f"no Chromium found ({', '.join(NAMES)} or $CHROMIUM): apt-get install chromium")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="robench-chromium-")
        cmd_r, self._cmd_w = os.pipe()       # we write commands, Chromium reads them on fd 3
        self._out_r, out_w = os.pipe()       # Chromium writes answers and events on fd 4
        cmd_r, out_w = _high(cmd_r), _high(out_w)  # never 3 or 4 themselves: the shell moves them there
        self._log = open(Path(self.profile) / "stderr.log", "wb")
        args = FLAGS + [f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "about:blank"]
        # bash (dash takes single-digit fds only) puts the two pipe ends on fds 3 and 4, then becomes Chromium
        self.proc = subprocess.Popen([shutil.which("bash") or "/bin/bash", "-c", f'exec "$0" "$@" 3<&{cmd_r} 4>&{out_w} {cmd_r}<&- {out_w}>&-',
                                      self.exe, *args], pass_fds=(cmd_r, out_w), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=self._log)
        os.close(cmd_r)
        os.close(out_w)
        self._buf = b""
        self._id = 0
        self.events: list = []
        self.session: Optional[str] = None
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
            self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                     session=False)["sessionId"]
            self.call("Page.enable")
            self.call("Runtime.enable")
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------ the protocol
    def _send(self, msg: Dict[str, Any]) -> None:
        data = json.dumps(msg).encode() + b"\0"
        while data:
            n = os.write(self._cmd_w, data)
            data = data[n:]

    def _read(self, deadline: float) -> Dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"Chromium did not answer within {self.timeout:.0f} s ({self._stderr_tail()})")
            ready, _, _ = select.select([self._out_r], [], [], left)
            if ready:
                chunk = os.read(self._out_r, 1 << 20)
                if not chunk:
                    raise BrowserError(f"Chromium closed the DevTools pipe ({self._stderr_tail()})")
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: Optional[Dict[str, Any]] = None, session: bool = True) -> Dict[str, Any]:
        """Send one command and return its result (events read meanwhile are kept in ``events``)."""
        self._id += 1
        msg: Dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        self._send(msg)
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._read(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise BrowserError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str) -> Dict[str, Any]:
        """The next event ``method`` of the page (or one already received)."""
        for i, m in enumerate(self.events):
            if m.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._read(deadline)
            if m.get("method") == method:
                return m
            self.events.append(m)

    def _stderr_tail(self) -> str:
        try:
            self._log.flush()
            lines = (Path(self.profile) / "stderr.log").read_text(errors="replace").strip().splitlines()
            return lines[-1] if lines else "no output"
        except OSError:
            return "no output"

    # ------------------------------------------------------------------------------ the page
    def open(self, path: Path | str, width: int = 1280, height: int = 900) -> None:
        """Load a local file at a ``width`` x ``height`` CSS-pixel viewport; returns after its load event."""
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        self.events.clear()
        res = self.call("Page.navigate", {"url": Path(path).resolve().as_uri()})
        if res.get("errorText"):
            raise BrowserError(f"cannot open {path}: {res['errorText']}")
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise BrowserError(f"JavaScript failed: {r['exceptionDetails'].get('exception', {}).get('description')}")
        return r["result"].get("value")

    def screenshot(self, png: Path | str, full_page: bool = True) -> Path:
        """A PNG of the viewport, or of the whole page (``full_page``) at the viewport's width."""
        params: Dict[str, Any] = {"format": "png"}
        if full_page:
            m = self.call("Page.getLayoutMetrics")
            size = m.get("cssContentSize") or m["contentSize"]
            vw = m.get("cssLayoutViewport", m.get("layoutViewport", {})).get("clientWidth", size["width"])
            params.update(clip={"x": 0, "y": 0, "width": vw, "height": size["height"], "scale": 1},
                          captureBeyondViewport=True)
        data = self.call("Page.captureScreenshot", params)["data"]
        Path(png).write_bytes(base64.b64decode(data))
        return Path(png)

    def close(self) -> None:
        try:
            if self.proc.poll() is None and self.session is not None:
                self._send({"id": self._id + 1, "method": "Browser.close", "params": {}})
                self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for fd in (self._cmd_w, self._out_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


#: what tests/test_report_browser.py measures in a page: its width against the viewport's, every
#: image (loaded and decoded, natural size), every link to another resource, and each table's scroll box
MEASURE = """(async () => {
  const imgs = [...document.images];
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  const box = e => { const r = e.getBoundingClientRect(); return {left: r.left, right: r.right, top: r.top}; };
  return {
    innerWidth: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
    bodyScrollWidth: document.body.scrollWidth,
    images: imgs.map(i => ({alt: i.alt, complete: i.complete, naturalWidth: i.naturalWidth,
                            naturalHeight: i.naturalHeight, shownWidth: i.getBoundingClientRect().width,
                            src: i.src.slice(0, 30)})),
    links: [...document.querySelectorAll('[href],[src],object[data]')].map(e => e.href || e.src || e.data)
             .filter(u => !u.startsWith('data:')),
    tables: [...document.querySelectorAll('div.table')].map(d => ({
      clientWidth: d.clientWidth, scrollWidth: d.scrollWidth, right: d.getBoundingClientRect().right,
      heading: (d.previousElementSibling || {}).textContent || ''})),
    headings: [...document.querySelectorAll('h2')].map(h => h.textContent),
  };
})()"""

#: whether a table's header stays in view when its box scrolls: the box is made short, scrolled down,
#: and its header's top compared with the box's (returns [box top, header top, first body row top])
STICKY = """(() => {
  const d = [...document.querySelectorAll('div.table')].pop();
  d.style.maxHeight = '90px';
  d.scrollTop = 40;
  const top = e => e.getBoundingClientRect().top;
  return [top(d), top(d.querySelector('thead')), top(d.querySelector('tbody tr'))];
})()"""


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="a screenshot of a local HTML page in headless Chromium")
    ap.add_argument("page")
    ap.add_argument("png")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--viewport-only", action="store_true", help="the first screen only, not the whole page")
    a = ap.parse_args(argv)
    with Chromium() as b:
        b.open(a.page, a.width, a.height)
        b.evaluate(MEASURE)  # waits until every image has decoded
        b.screenshot(a.png, full_page=not a.viewport_only)
    print(a.png)


if __name__ == "__main__":
    main(sys.argv[1:])
