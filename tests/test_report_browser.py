"""report.html in headless Chromium: it loads with no console error, fetches nothing from outside
itself, shows every figure, and fits a laptop screen.

How: Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: file
descriptors 3 and 4 carry NUL-separated JSON messages), which needs no port, no network and no
extra Python package. With Page, Runtime, Log and Network events enabled, the test navigates to
the file:// URL, waits for the page's load event, and then
- collects every `Runtime.consoleAPICalled` of level error/warning, `Runtime.exceptionThrown` and
  `Log.entryAdded` of level error (this is where a failed image load or a blocked request shows up);
- lists every `Network.requestWillBeSent` URL: only the report itself and data: URIs may be asked for;
- evaluates in the page, after load, the number of <img> elements that are complete, have a
  natural width > 0 (the PNG decoded) and a rendered box > 0 (it is displayed), and compares it
  with the number of PNG files in RUN/figures/;
- at a 1366 x 768 viewport (a common laptop), checks the page does not scroll sideways, and saves
  a screenshot (Page.captureScreenshot) which must be a non-blank PNG.
This is more robust than scraping `--enable-logging=stderr` (which misses failed resource loads)
and than `--dump-dom` with an injected script (which changes the page under test).

Chromium is Debian's `chromium` (`.ci/run` installs it); outside CI the test is skipped when absent.
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from report_run import make_run
from tumorcam.report import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")
LAPTOP = {"width": 1366, "height": 768, "deviceScaleFactor": 1, "mobile": False}

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="chromium is not installed (apt-get install chromium; .ci/run installs it)")


class DevTools:
    """A minimal DevTools-protocol client over Chromium's --remote-debugging-pipe (fds 3 and 4)."""

    def __init__(self, profile: Path, timeout: float = 60.0) -> None:
        assert CHROMIUM, "chromium is required in CI"
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire_fds() -> None:  # in the child: the pipe ends become fds 3 (read) and 4 (write)
            read_end, write_end = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            preexec_fn=wire_fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._buffer = b""
        self._id = 0

    def _next_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_chrome], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def wait_for(self, predicate) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._next_message(deadline)
            if "id" not in message:
                self.events.append(message)
            if predicate(message):
                return message

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict[str, Any]:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        reply = self.wait_for(lambda m, i=self._id: m.get("id") == i)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (OSError, EOFError, TimeoutError, RuntimeError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def load_in_chromium(page: Path, profile: Path) -> dict[str, Any]:
    """Open `page` at a laptop viewport; return images, problems, requested URLs, layout and a screenshot."""
    browser = DevTools(profile)
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.call(f"{domain}.enable", session=session)
        browser.call("Emulation.setDeviceMetricsOverride", LAPTOP, session)
        browser.call("Page.navigate", {"url": page.resolve().as_uri()}, session)
        browser.wait_for(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session)
        probe = """JSON.stringify({
            images: [...document.images].map(i => ({complete: i.complete, natural: i.naturalWidth,
                                                    shown: i.getBoundingClientRect().width, alt: i.alt})),
            scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
            text: document.body.innerText})"""
        state = json.loads(browser.call("Runtime.evaluate", {"expression": probe, "returnByValue": True},
                                        session)["result"]["value"])
        shot = browser.call("Page.captureScreenshot", {"format": "png"}, session)["data"]
    finally:
        browser.close()
    problems, requests = [], []
    for event in browser.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
            problems.append(f"console {params['type']}: {params.get('args')}")
        elif method == "Runtime.exceptionThrown":
            problems.append(f"exception: {params.get('exceptionDetails')}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            problems.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        elif method == "Network.requestWillBeSent":
            requests.append(params["request"]["url"])
    return {**state, "problems": problems, "requests": requests, "screenshot": base64.b64decode(shot)}


@needs_chromium
def test_report_loads_in_chromium_with_every_figure_shown(tmp_path: Path, blob_prepared: Path) -> None:
    run = make_run(tmp_path / "run", blob_prepared)
    page = build_report(run)
    figures = sorted((run / "figures").glob("*.png"))
    assert len(figures) == 7

    result = load_in_chromium(page, tmp_path / "profile")

    assert result["problems"] == []
    assert [u for u in result["requests"] if not u.startswith("data:")] == [page.resolve().as_uri()]
    images = result["images"]
    assert len(images) == len(figures)
    assert all(i["complete"] and i["natural"] > 0 and i["shown"] > 0 for i in images), images
    assert result["scrollWidth"] <= result["innerWidth"], "the page scrolls sideways on a 1366 px screen"
    assert "How to read this report" in result["text"]
    assert "Not available" not in result["text"]
    screenshot = np.asarray(Image.open(io.BytesIO(result["screenshot"])).convert("L"), dtype=np.float32)
    assert screenshot.shape == (768, 1366) and screenshot.std() > 5
    (tmp_path / "screenshot.png").write_bytes(result["screenshot"])


@needs_chromium
def test_report_with_missing_sections_still_loads_cleanly(tmp_path: Path, blob_prepared: Path) -> None:
    run = make_run(tmp_path / "run", blob_prepared, sections=("history",))
    page = build_report(run)

    result = load_in_chromium(page, tmp_path / "profile")

    assert result["problems"] == []
    assert len(result["images"]) == len(list((run / "figures").glob("*.png"))) == 3  # classes, masks, training
    assert "faithfulness.json is missing" in result["text"]
    assert "sanity.json is missing" in result["text"]
