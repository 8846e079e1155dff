"""The headless-Chromium helper (tests/chromium.py) on pages with known good and bad content.

Skipped only where no Chromium binary is installed (`.ci/run` installs Debian's chromium).
"""

from __future__ import annotations

import base64
import os
import struct
import zlib
from pathlib import Path

import pytest

from tests import chromium
from tests.chromium import ChromiumError, find_chromium, render_page

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_png(width: int, height: int) -> bytes:
    """A valid RGB PNG (a red-to-blue gradient) built by hand."""
    rows = b"".join(
        b"\x00"
        + b"".join(bytes((255 * x // width, 64, 255 - 255 * x // width)) for x in range(width))
        for _ in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


@pytest.fixture
def chromium_path() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip(
            "no Chromium binary (/usr/bin/chromium, chromium, chromium-browser, google-chrome)"
        )
    return path


@pytest.fixture
def browsers(monkeypatch) -> list:
    """Every browser that render_page starts, so a test can check that none survives it."""
    started: list = []

    class Recording(chromium._Browser):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(chromium, "_Browser", Recording)
    return started


def assert_cleaned_up(browsers: list) -> None:
    assert len(browsers) == 1
    b = browsers[0]
    assert b.proc.poll() is not None, "the browser process is still running"
    assert b.leftover_pids() == [], "browser child processes survived"
    assert not os.path.exists(b.root), "the temporary profile was not removed"


def test_good_page_renders_clean(tmp_path: Path, chromium_path: str, browsers: list) -> None:
    html = tmp_path / "good.html"
    html.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>Good report</title>"
        "<style>body{font-family:sans-serif;margin:2em} img{width:160px;border:1px solid #333}"
        "</style></head><body><h1>Win rate</h1>"
        f"<img alt='figure' src='{data_uri(tiny_png(16, 12))}'>"
        "<p>All inline.</p></body></html>",
        encoding="utf-8",
    )
    shot = tmp_path / "shots" / "good.png"

    report = render_page(html, shot, timeout_s=30, executable=chromium_path)

    assert report.errors == []
    assert report.title == "Good report"
    assert [(im.natural_width, im.natural_height, im.complete) for im in report.images] == [
        (16, 12, True)
    ]
    assert report.images[0].src_prefix.startswith("data:image/png;base64,")
    assert report.broken_images == []
    assert report.external_requests == []
    assert report.screenshot == shot
    assert shot.read_bytes()[:8] == PNG_SIGNATURE
    assert_cleaned_up(browsers)


def test_bad_page_reports_errors_and_broken_image(
    tmp_path: Path, chromium_path: str, browsers: list
) -> None:
    html = tmp_path / "bad.html"
    html.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>Bad report</title></head><body>"
        "<script>console.error('boom')</script>"
        f"<img alt='ok' src='{data_uri(tiny_png(4, 3))}'>"
        "<img alt='broken' src='data:image/png;base64,iVBORw0KGgoAAAAbroken'>"
        "<script>throw new Error('kaboom')</script>"
        "</body></html>",
        encoding="utf-8",
    )
    shot = tmp_path / "bad.png"

    report = render_page(html, shot, timeout_s=30, executable=chromium_path)

    assert any("boom" in e for e in report.errors), report.errors
    assert any("kaboom" in e and "uncaught" in e for e in report.errors), report.errors
    ok, broken = report.images
    assert ok.natural_width == 4
    assert broken.natural_width == 0
    assert "data:image/png;base64,iVBORw0KGgoAAAAbroken".startswith(broken.src_prefix)
    assert report.broken_images == [broken]
    assert shot.read_bytes()[:8] == PNG_SIGNATURE
    assert_cleaned_up(browsers)


def test_timeout_raises_and_cleans_up(tmp_path: Path, chromium_path: str, browsers: list) -> None:
    html = tmp_path / "hang.html"
    html.write_text("<html><body><script>while (true) {}</script></body></html>")

    with pytest.raises(ChromiumError, match="timed out"):
        render_page(html, tmp_path / "hang.png", timeout_s=2, executable=chromium_path)

    assert not (tmp_path / "hang.png").exists()
    assert_cleaned_up(browsers)
