"""Render a local HTML file in headless Chromium and report what went wrong (a test helper).

The driver is the Chrome DevTools Protocol spoken directly over ``--remote-debugging-pipe``
(JSON messages separated by NUL bytes on file descriptors 3 and 4 of the browser), so nothing
beyond the standard library and a Chromium binary is needed: no chromedriver, no Playwright
browser download, no TCP port. The browser runs in its own process group with a fresh temporary
profile; ``render_page`` always closes it (also on error or timeout), kills any of its processes
still alive, and removes the profile. If the Python process dies outright, the command pipe
closes and Chromium shuts itself down within a second.

    report = render_page(Path("CMP/report.html"), Path("shot.png"))
    assert not report.errors and not report.broken_images
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")

# Known to work as root in a container on a closed network: without the background-networking
# switches Chromium tries to reach Google services, the connections are refused, and it logs
# errors.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--mute-audio",
)

# fd 3 / fd 4 are where Chromium expects the DevTools pipe; map them from stdin / stdout with a
# tiny shell so that no preexec_fn (unsafe with threads) is needed. The shell execs Chromium, so
# the Popen pid is the browser's.
_PIPE_SHIM = 'exec 3<&0 4>&1 0</dev/null 1>&2; exec "$@"'

_IMAGES_JS = """
(async () => {
  await Promise.all(Array.from(document.images, (img) => img.decode().catch(() => null)));
  return Array.from(document.images, (img) => [
    (img.currentSrc || img.src || '').slice(0, %d), img.naturalWidth, img.naturalHeight,
    img.complete]);
})()
"""


class ImageInfo(NamedTuple):
    src_prefix: str
    natural_width: int
    natural_height: int
    complete: bool


@dataclass
class PageReport:
    """What one page load produced. ``errors`` holds console errors, uncaught exceptions, failed
    resource loads and browser log errors, each as one line of text."""

    url: str
    title: str
    errors: list[str]
    images: list[ImageInfo]
    screenshot: Path
    requests: list[str] = field(default_factory=list)  # every URL the page fetched

    @property
    def broken_images(self) -> list[ImageInfo]:
        return [im for im in self.images if im.natural_width <= 0 or not im.complete]

    @property
    def external_requests(self) -> list[str]:
        """Fetched URLs that are not inline (data:/blob:) or the page's own file."""
        inline = ("data:", "blob:")
        return [u for u in self.requests if u != self.url and not u.startswith(inline)]


class ChromiumError(RuntimeError):
    """The browser could not be driven (did not start, died, timed out, protocol error)."""


def find_chromium() -> str | None:
    """The path of a Chromium/Chrome binary, or None when there is none."""
    for name in CANDIDATES:
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


class _Browser:
    """One headless Chromium process and a minimal CDP client over its debugging pipe."""

    def __init__(self, executable: str, deadline: float):
        self.deadline = deadline
        # Everything the browser writes goes under one temporary root: the profile, and (through
        # TMPDIR / XDG_*) its singleton socket, dconf cache and crashpad database, which would
        # otherwise land in /tmp and ~/.config/chromium.
        self.root = tempfile.mkdtemp(prefix="preflab-chromium-")
        env = dict(os.environ)
        for var, sub in (
            ("TMPDIR", "tmp"),
            ("XDG_CONFIG_HOME", "config"),
            ("XDG_CACHE_HOME", "cache"),
        ):
            env[var] = os.path.join(self.root, sub)
            os.mkdir(env[var])
        self.stderr = tempfile.TemporaryFile()
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        cmd = [
            executable,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={os.path.join(self.root, 'profile')}",
            "--remote-debugging-pipe",
            "--window-size=1280,800",
            "about:blank",
        ]
        try:
            self.proc = subprocess.Popen(
                ["/bin/sh", "-c", _PIPE_SHIM, "sh", *cmd],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.stderr,
                env=env,
                start_new_session=True,
            )
        except BaseException:
            self.stderr.close()
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    # -- transport -------------------------------------------------------------------------

    def _stderr_tail(self) -> str:
        try:
            self.stderr.seek(0)
            return self.stderr.read().decode("utf-8", "replace")[-2000:]
        except (OSError, ValueError):
            return ""

    def _read_message(self) -> dict[str, Any]:
        fd = self.proc.stdout.fileno()
        while b"\0" not in self._buf:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise ChromiumError("timed out waiting for Chromium")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise ChromiumError(
                    f"Chromium closed the DevTools pipe (exit {self.proc.poll()}); "
                    f"stderr:\n{self._stderr_tail()}"
                )
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send a command and wait for its result; events that arrive meanwhile are queued."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        try:
            self.proc.stdin.write(json.dumps(msg).encode() + b"\0")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise ChromiumError(f"Chromium is gone: {e}; stderr:\n{self._stderr_tail()}") from e
        while True:
            reply = self._read_message()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise ChromiumError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    # -- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        proc = self.proc
        if proc.poll() is None:
            try:  # ask politely first; the browser exits and flushes its profile
                self._next_id += 1
                proc.stdin.write(
                    json.dumps({"id": self._next_id, "method": "Browser.close"}).encode() + b"\0"
                )
                proc.stdin.flush()
                proc.wait(timeout=5)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        # Kill whatever is left: the process group (zygotes, GPU, network and renderer
        # processes) and the crashpad handlers, which start their own session but name our
        # root directory on their command line.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for _ in range(50):
            left = self.leftover_pids()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.1)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (proc.stdin, proc.stdout, self.stderr):
            try:
                stream.close()
            except OSError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def leftover_pids(self) -> list[int]:
        """Live (not zombie) processes that belong to this browser, read from /proc. Children
        that outlive the browser are re-parented to init and may linger there as zombies
        until init reaps them; those are dead and not counted."""
        return leftover_pids(self.proc.pid, self.root)


def leftover_pids(pgid: int, marker: str) -> list[int]:
    """Live processes in process group ``pgid`` or whose command line contains ``marker``."""
    found: list[int] = []
    needle = marker.encode()
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs (not Linux): killpg above is all we can do
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()  # state ppid pgrp ...
        if fields[0] in (b"Z", b"X"):
            continue
        if int(fields[2]) == pgid or needle in cmdline:
            found.append(int(entry))
    return found


def _console_text(args: list[dict]) -> str:
    parts = []
    for a in args:
        if "value" in a:
            parts.append(a["value"] if isinstance(a["value"], str) else json.dumps(a["value"]))
        else:
            parts.append(a.get("description") or a.get("type", "?"))
    return " ".join(parts)


def _collect(events: list[dict], session: str) -> tuple[list[str], list[str]]:
    """Turn the page session's CDP events into error lines and the list of requested URLs."""
    errors: list[str] = []
    requests: list[str] = []
    urls: dict[str, str] = {}
    failed: set[str] = set()
    network_log: list[dict] = []
    for ev in events:
        if ev.get("sessionId") != session:
            continue
        method, p = ev["method"], ev.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append(f"console.{p['type']}: {_console_text(p.get('args', []))}")
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            text = (d.get("exception") or {}).get("description") or d.get("text", "")
            errors.append(f"uncaught exception: {text}")
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            if e.get("source") == "network":  # most repeat a Network.loadingFailed; see below
                network_log.append(e)
            else:
                errors.append(f"log ({e.get('source')}): {e.get('text')}")
        elif method == "Network.requestWillBeSent":
            url = p.get("request", {}).get("url", "")
            urls[p.get("requestId", "")] = url
            requests.append(url)
        elif method == "Network.loadingFailed" and not p.get("canceled"):
            url = urls.get(p.get("requestId", ""), "?")
            failed.add(url)
            errors.append(f"failed to load {url[:100]}: {p.get('errorText')}")
        elif method == "Page.javascriptDialogOpening":
            errors.append(f"javascript dialog ({p.get('type')}): {p.get('message')}")
    # e.g. an HTTP 404, which is no loading failure at the network level
    errors += [
        f"log (network): {e.get('text')} {e.get('url', '')[:100]}"
        for e in network_log
        if e.get("url") not in failed
    ]
    return errors, requests


def render_page(
    html_path: Path,
    screenshot_path: Path,
    *,
    timeout_s: float = 60,
    executable: str | None = None,
    src_prefix_len: int = 40,
) -> PageReport:
    """Load ``html_path`` as a file:// URL in headless Chromium, wait for the load event and for
    every image to decode, save a full-page PNG to ``screenshot_path`` and report errors,
    images and title. Raises ChromiumError when no browser is found or it cannot be driven
    within ``timeout_s`` seconds (the browser is cleaned up either way)."""
    executable = executable or find_chromium()
    if executable is None:
        raise ChromiumError("no Chromium binary found")
    url = Path(html_path).resolve().as_uri()
    browser = _Browser(executable, deadline=time.monotonic() + timeout_s)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.setLifecycleEventsEnabled", {"enabled": True}, session=session)
        nav = browser.send("Page.navigate", {"url": url}, session=session)
        if nav.get("errorText"):
            raise ChromiumError(f"navigation to {url} failed: {nav['errorText']}")
        _wait_load(browser, session, nav.get("loaderId", ""))
        images = browser.send(
            "Runtime.evaluate",
            {
                "expression": _IMAGES_JS % src_prefix_len,
                "awaitPromise": True,
                "returnByValue": True,
            },
            session=session,
        )
        if "exceptionDetails" in images:
            raise ChromiumError(f"image probe failed: {images['exceptionDetails']}")
        title = browser.send(
            "Runtime.evaluate",
            {"expression": "document.title", "returnByValue": True},
            session=session,
        )["result"].get("value", "")
        metrics = browser.send("Page.getLayoutMetrics", session=session)
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = browser.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {
                    "x": 0,
                    "y": 0,
                    "width": max(1, size["width"]),
                    "height": max(1, size["height"]),
                    "scale": 1,
                },
            },
            session=session,
        )
        screenshot_path = Path(screenshot_path)
        screenshot_path.parent.mkdir(parents=True, exist_ok=True)
        screenshot_path.write_bytes(base64.b64decode(shot["data"]))
        errors, requests = _collect(browser.events, session)
    finally:
        browser.close()
    return PageReport(
        url=url,
        title=title,
        errors=errors,
        images=[
            ImageInfo(str(s), int(w), int(h), bool(c)) for s, w, h, c in images["result"]["value"]
        ],
        screenshot=screenshot_path,
        requests=requests,
    )


def _wait_load(browser: _Browser, session: str, loader_id: str) -> None:
    """Wait for the load lifecycle event of navigation ``loader_id``, accepting any JavaScript
    dialog that would block it (the dialog is reported as an error)."""
    seen = 0
    while True:
        while seen < len(browser.events):
            ev = browser.events[seen]
            seen += 1
            if ev.get("sessionId") != session:
                continue
            p = ev.get("params", {})
            if ev.get("method") == "Page.lifecycleEvent" and p.get("name") == "load":
                if p.get("loaderId") == loader_id:
                    return
            elif ev.get("method") == "Page.javascriptDialogOpening":
                browser.send("Page.handleJavaScriptDialog", {"accept": True}, session=session)
        msg = browser._read_message()
        if "method" in msg:
            browser.events.append(msg)
