"""The studio notebook in a real browser: JupyterLab and Voila started headless on 127.0.0.1, Debian's
chromium driven by Playwright; the widget renders, a tiny clip is generated from the page, and it
plays in the gallery. Screenshots go to the test's temp folder, and to $OVI_SCREENSHOT_DIR when set
(the README's come from experiments/results/screenshots/)."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PLAY = """async (video) => {
  video.muted = true;
  await video.play();
  await new Promise(resolve => setTimeout(resolve, 400));
  return {ready: video.readyState, time: video.currentTime, duration: video.duration, ended: video.ended,
          error: video.error && video.error.code, width: video.videoWidth};
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(name, args, cwd, env, url, log, timeout=60.0):
    """Start a server and return it once `url` answers at all (its own exit fails the test)."""
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}: {Path(log.name).read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc
        except urllib.error.HTTPError:  # an HTTP answer (e.g. 403): the server is up
            return proc
        except OSError:
            time.sleep(0.3)  # the server is still starting; it has no readiness signal to wait on
    proc.terminate()
    raise AssertionError(f"{name} did not answer {url} within {timeout:.0f}s")


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _generate_from_page(page, shots: list[Path], name: str):
    """The widget is on the page: click Generate now, wait for the new card, play its video."""
    page.wait_for_selector(".ovi-studio", timeout=60_000)
    page.wait_for_selector(".ovi-clip video", timeout=120_000)  # the notebook's scripted clip
    before = page.locator(".ovi-clip").count()
    page.get_by_role("button", name="Generate now").click()
    page.wait_for_function(f"document.querySelectorAll('.ovi-clip').length > {before}", timeout=120_000)
    card = page.locator(".ovi-clip").first  # newest first
    video = card.locator("video")
    video.scroll_into_view_if_needed()
    state = video.evaluate(PLAY)
    assert state["error"] is None and state["duration"] > 0 and state["width"] > 0, state
    assert state["time"] > 0 or state["ended"], state
    assert card.locator("audio").count() == 1
    # JupyterLab asks once whether to fetch its news (news_url=None stops the fetch, not the question):
    # answer it so the toast does not cover the screenshot
    toast = page.locator(".jp-toast-button", has_text="No")
    if toast.count():
        toast.first.click()
        toast.first.wait_for(state="detached", timeout=10_000)
    for folder in shots:
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
    return state


def test_studio_in_jupyterlab_and_voila(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: `apt-get install -y chromium` (make test does it as root)")
    from playwright.sync_api import sync_playwright

    env = {**os.environ, "JUPYTER_PLATFORM_DIRS": "1"}
    shots = [tmp_path / "screenshots"] + ([Path(os.environ["OVI_SCREENSHOT_DIR"])]
                                          if os.environ.get("OVI_SCREENSHOT_DIR") else [])
    servers = []
    for app in ("lab", "voila"):
        (tmp_path / app).mkdir()
        shutil.copy(REPO / "notebooks" / "studio.ipynb", tmp_path / app / "studio.ipynb")
    lab_port, voila_port, token = _free_port(), _free_port(), "ovi-test-token"
    bin_dir = Path(sys.executable).parent
    with open(tmp_path / "lab.log", "w") as lab_log, open(tmp_path / "voila.log", "w") as voila_log:
        try:
            servers.append(_serve(
                "jupyterlab", [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                 f"--ServerApp.port={lab_port}", f"--IdentityProvider.token={token}",
                 f"--ServerApp.root_dir={tmp_path / 'lab'}", "--LabApp.expose_app_in_browser=True",
                 "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                 "--LabApp.extension_manager=readonly", "--allow-root"],
                tmp_path / "lab", env, f"http://127.0.0.1:{lab_port}/api/status?token={token}", lab_log))
            servers.append(_serve(
                "voila", [str(bin_dir / "voila"), "studio.ipynb", "--no-browser", "--Voila.ip=127.0.0.1",
                 f"--port={voila_port}", "--show_tracebacks=True"],
                tmp_path / "voila", env, f"http://127.0.0.1:{voila_port}/api/status", voila_log))
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"http://127.0.0.1:{lab_port}/lab/tree/studio.ipynb?token={token}")
                page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget "
                                       "&& window.jupyterapp.shell.currentWidget.sessionContext "
                                       "&& window.jupyterapp.shell.currentWidget.sessionContext.session",
                                       timeout=90_000)
                page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
                _generate_from_page(page, shots, "jupyterlab_studio")

                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"http://127.0.0.1:{voila_port}/", timeout=180_000)
                _generate_from_page(page, shots, "voila_studio")
                browser.close()
        finally:
            for proc in servers:
                _stop(proc)
