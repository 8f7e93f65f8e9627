"""The web page end to end in a real headless browser: Debian's chromium driven by its chromedriver over the
W3C WebDriver protocol (plain HTTP, spoken here with httpx; no extra package, nothing downloaded).

Needs `apt-get install chromium chromium-driver`; skipped with that message when they are missing.
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from realface.model import load_model
from realface.serve import create_app, serve_in_background

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C WebDriver key of an element reference
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1100,1100",
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """A WebDriver session: just the commands this test needs."""

    def __init__(self, http: httpx.Client, session: str) -> None:
        self.http = http
        self.base = f"/session/{session}"

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        response = self.http.request(method, self.base + path, json=payload)
        body = response.json()
        assert response.status_code == 200, body
        return body["value"]

    def open(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def find(self, css: str) -> str:
        return self._call("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def upload(self, css: str, path: Path) -> None:
        """Choose a file in an <input type=file>, as a person would."""
        self._call("POST", f"/element/{self.find(css)}/value", {"text": str(path)})

    def js(self, script: str) -> Any:
        return self._call("POST", "/execute/sync", {"script": script, "args": []})

    def wait(self, script: str, timeout: float = 60.0) -> Any:
        """Poll a script until it returns something truthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(script)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for: {script}")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self._call("GET", "/screenshot")))
        return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    port = free_port()
    driver = subprocess.Popen(
        [CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if http.get("/status").json()["value"]["ready"]:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "chromedriver did not start"
                time.sleep(0.1)
            options = {"binary": CHROMIUM, "args": [*FLAGS, f"--user-data-dir={profile}"]}
            capabilities = {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}
            created = http.post("/session", json={"capabilities": capabilities})
            assert created.status_code == 200, created.text
            session = created.json()["value"]["sessionId"]
            try:
                yield Browser(http, session)
            finally:
                http.delete(f"/session/{session}")
    finally:
        driver.terminate()
        driver.wait(timeout=20)


@pytest.fixture(scope="module")
def site(tiny_model: Path) -> Iterator[str]:
    with serve_in_background(create_app(load_model(tiny_model), frames=2)) as url:
        yield url


RESULT = """
const err = document.getElementById('error');
if (err.style.display === 'block') return {error: err.textContent};
if (document.getElementById('result').style.display !== 'block') return null;
const heat = document.querySelector('img.heatmap');
return {verdict: document.getElementById('verdict').textContent,
        pfake: document.getElementById('pfake').textContent,
        heatmap: heat ? [heat.complete, heat.naturalWidth] : null,
        points: document.querySelectorAll('#plot circle').length,
        threshold: !!document.getElementById('threshold-line'),
        sheet: document.querySelector('#sheet img').naturalWidth};
"""


def test_page_shows_a_verdict_for_a_real_face(browser: Browser, site: str, tmp_path: Path) -> None:
    from skimage import data

    face = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(face), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    browser.open(site + "/")
    shown_model = "const t = document.getElementById('model').textContent; return t.includes('threshold:') && t;"
    footer = browser.wait(shown_model)
    assert "test model" in footer and "0.500" in footer
    browser.upload("#file", face)
    shown = browser.wait(RESULT)
    assert "error" not in shown, shown
    assert shown["verdict"] in {"REAL", "FAKE", "UNCERTAIN"}
    assert 0.0 <= float(shown["pfake"]) <= 1.0
    assert shown["heatmap"] == [True, 64]  # the heatmap <img> loaded: the 64 px overlay of the face
    shot = browser.screenshot(tmp_path / "page-image.png")
    pixels = cv2.imread(str(shot))
    assert pixels is not None and pixels.shape[0] > 500 and pixels.std() > 10  # a rendered page, not blank


def test_page_plots_a_video(browser: Browser, site: str, shared_data: Path, tmp_path: Path) -> None:
    browser.open(site + "/")
    browser.upload("#file", shared_data / "ffpp-videos" / "original" / "519.mp4")
    shown = browser.wait(RESULT)
    assert "error" not in shown, shown
    assert shown["verdict"] in {"REAL", "FAKE", "UNCERTAIN"}
    assert shown["points"] == 2 and shown["threshold"]  # one point per sampled frame, and the threshold line
    assert shown["sheet"] == 8 * 64  # the contact sheet loaded
    browser.screenshot(tmp_path / "page-video.png")


def test_page_shows_api_errors(browser: Browser, site: str, tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    browser.open(site + "/")
    browser.upload("#file", bad)
    shown = browser.wait(RESULT)
    assert shown["error"].startswith("Cannot use this file: not a readable image"), shown


def test_api_docs_render_offline(browser: Browser, site: str) -> None:
    """Swagger UI draws the API from /openapi.json with the packaged scripts (the browser has no internet)."""
    browser.open(site + "/docs")
    paths = browser.wait("const p = [...document.querySelectorAll('.opblock-summary-path')]; "
                         "return p.length && p.map(e => e.textContent.trim());")
    assert {"/v1/detect", "/v1/model", "/healthz"} <= set(paths)
