"""report.html as a user sees it: rendered by headless Chromium (Debian packages chromium and
chromium-driver, installed here once when missing), which must draw its charts and tables,
print no console message and make no network request.

Console messages come from --enable-logging=stderr (":CONSOLE" lines; a blocked request or
script shows up there too, via the page's Content-Security-Policy). Requests come from
--log-net-log: every URL request the page starts is keyed to its file:// page. A canary page
proves both detectors fire.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--no-first-run", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # a request, were there one, fails at once
    "--enable-logging=stderr", "--v=0",
]
CANARY = ('<!DOCTYPE html><html><body><img src="http://canary.invalid/x.png">'
          '<script>console.error("canary")</script></body></html>')


def _install() -> str | None:
    """chromium from Debian's packages, once (CI runs as root)."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]
    if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(install, env=env, capture_output=True, timeout=900)
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or _install()
    if not path:
        pytest.skip("chromium is not installed and `apt-get install chromium chromium-driver` was not possible")
    return path


def _run(chromium: str, tmp: Path, page: Path, *mode: str) -> tuple[str, str, list[str]]:
    """(stdout, console lines, URLs the page requested) of one headless run with a fresh profile."""
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    netlog = profile.with_suffix(".netlog.json")
    proc = subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={profile}", f"--log-net-log={netlog}", *mode, page.as_uri()],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, "\n".join(console), _page_requests(netlog)


def _page_requests(netlog: Path) -> list[str]:
    """URLs of requests started on behalf of a file:// page (not the browser's own housekeeping)."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        from_page = "file://" in str(params.get("network_isolation_key", ""))
        if event["type"] == start and from_page and not params["url"].startswith("file:"):
            urls.append(params["url"])
    return urls


def test_detectors_fire_on_a_canary(chromium, tmp_path):
    page = tmp_path / "canary.html"
    page.write_text(CANARY)
    _dom, console, requests = _run(chromium, tmp_path, page, "--dump-dom")
    assert "canary" in console
    assert requests == ["http://canary.invalid/x.png"]


def test_report_renders_offline(chromium, cases_workdir, tmp_path):
    page = cases_workdir / "report" / "report.html"
    dom, console, requests = _run(chromium, tmp_path, page, "--dump-dom")
    assert console == ""
    assert requests == []
    assert dom.count("<svg") == 5 and dom.count('class="bar"') > 20
    assert dom.count("<table") >= 8
    assert '<div class="n">20</div><div class="l">newly rejected</div>' in dom
    assert "<script" not in dom.lower() and "<img" not in dom.lower()

    shot = tmp_path / "report.png"
    _out, console, requests = _run(chromium, tmp_path, page, f"--screenshot={shot}", "--window-size=1200,2400")
    assert console == "" and requests == []
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 50_000  # a page with colour, not a blank one
