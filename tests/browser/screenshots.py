"""Look at the notebooks as a learner does: run them in JupyterLab in headless Chromium and screenshot what matters.

    make screenshots            # or: .venv/bin/python tests/browser/screenshots.py [OUT_DIR]

Needs Debian's `chromium` (`apt-get install chromium`) and the `playwright` Python package
(`.venv/bin/pip install playwright`; its own browser download, `playwright install`, is not used). Not part of
`make test`: it trains on the CPU, for minutes at the defaults.

In a temporary copy of the repository layout (the checkout's data/ and generated/ stay untouched) it runs notebooks 01
to 06 with their defaults, as a learner who opens them and picks Run > Run All Cells, with notebook 03 run a second
time with the tweak it invites (lr_g = 1e-3) before 04; it saves, under OUT_DIR (default generated/screenshots/):

    01-size.png                   what `size = "auto"` chose on this machine, and why
    03-hand-loop.png              the hand-written loop's samples after its time cap
    03-start-of-training.png      the training cell while epoch 1 trains: the settings, the estimate, the live plot
    03-end-of-training.png        the same cell when training ended
    03-compare.png                "Compare your runs"
    03-troubleshooting.png        the first figures of the troubleshooting guide (cell attachments)
    03-tweak-lr_g.png             the training cell of the tweak (lr_g = 1e-3): what its diagnoses say
    03-tweak-compare.png          the comparison with the tweak beside the main run
    04-choice-of-run.png          which run 04 animates, and why
    04-gif.png                    the GIF and its download link
    05-training.png               the improved recipe trained beside the DCGAN run
    05-fid.png                    the FID estimate and scores
    05-comparison.png             the two recipes compared
    05-latent-walk.png            the walk through the latent space
    06-explorer.png               06's sliders and faces as they first show
    06-explorer-moved.png         the same after moving the seed and direction sliders (redrawn in place)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook
from playwright.sync_api import Page, sync_playwright

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = ["01_dataset", "02_models", "03_training", "04_gif", "05_evaluate", "06_use_your_gan"]
TWEAK = {"lr_g": 1e-3}   # the tweak notebook 03 invites, run as a second copy of 03 (03_training-tweak.ipynb)
CELL_TIMEOUT_MS = 60 * 60 * 1000   # a busy 2-core CPU trains the defaults for many minutes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prepare(work: Path) -> None:
    """The repository layout with the notebooks as committed, and 03 once more with TWEAK injected (as papermill
    injects parameters)."""
    (work / "notebooks").mkdir(parents=True)
    (work / "utils").symlink_to(REPO / "utils", target_is_directory=True)
    for name in NOTEBOOKS:
        shutil.copy(REPO / "notebooks" / f"{name}.ipynb", work / "notebooks")
    notebook = load_notebook_node(str(REPO / "notebooks" / "03_training.ipynb"))   # as papermill reads it
    nbformat.write(parameterize_notebook(notebook, TWEAK), work / "notebooks" / "03_training-tweak.ipynb")
    settings = work / "lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # every cell rendered (not only those in view), so that cells far down can be found and scrolled to
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    news = work / "lab-settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false",
                                                                       "checkForUpdates": False}))


def open_and_run_all(page: Page, url: str, name: str) -> None:
    """Open the notebook alone (`?reset`: no other tabs), wait until its kernel is idle, then Run > Run All Cells."""
    page.goto(f"{url}/lab/tree/notebooks/{name}.ipynb?reset")
    page.locator(".jp-Notebook").first.wait_for(timeout=120_000)
    page.get_by_text("Python 3 (ipykernel) | Idle").first.wait_for(timeout=120_000)
    time.sleep(3)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_text("Run All Cells", exact=True).click()


def code_cell(page: Page, text: str):
    return page.locator(".jp-CodeCell", has=page.locator(".jp-InputArea", has_text=text)).first


def wait_for_output(page: Page, cell_text: str, output_text: str, timeout_ms: int = CELL_TIMEOUT_MS):
    cell = code_cell(page, cell_text)
    cell.locator(".jp-OutputArea", has_text=output_text).first.wait_for(timeout=timeout_ms)
    return cell


def shoot(cell, path: Path) -> None:
    cell.scroll_into_view_if_needed()
    time.sleep(1.5)   # images decode, the live plot redraws
    cell.screenshot(path=str(path))
    print("saved", path, flush=True)


def wait_until_idle(page: Page) -> None:
    """Until Run All is over: no cell queued or running ([*]:), and some ran ([N]:); an error ends it early."""
    page.wait_for_function("""() => {
        const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent);
        return !prompts.some(text => text.includes('*')) && prompts.some(text => /\\[\\d+\\]/.test(text));
    }""", timeout=CELL_TIMEOUT_MS, polling=1000)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian's chromium: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="screenshots-") as temporary:
        work = Path(os.environ.get("SCREENSHOTS_WORK") or temporary)   # a folder to keep (and reuse) between runs
        if not (work / "notebooks").is_dir():
            prepare(work)
        port = free_port()
        env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(work / "lab-settings"), "OMP_NUM_THREADS": "2"}
        env.pop("SMOKE_TEST", None)
        lab = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
                                "--allow-root", "--ServerApp.token=", "--ServerApp.password=",
                                "--ServerApp.disable_check_xsrf=True",
                                f"--ServerApp.root_dir={work}"], cwd=work, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                for _ in range(120):
                    try:
                        page.goto(f"{url}/lab")
                        break
                    except Exception:
                        time.sleep(1)

                start = os.environ.get("SCREENSHOTS_FROM", "01_dataset")   # e.g. 04_gif: the notebooks before it ran
                if start == "01_dataset":
                    run_01_to_03(page, url, out)
                if start in ("01_dataset", "03_training-tweak"):
                    run_tweak(page, url, out)
                if start in ("01_dataset", "03_training-tweak", "04_gif"):
                    run_04_to_06(page, url, out)
                browser.close()
        finally:
            os.killpg(lab.pid, signal.SIGTERM)
            lab.wait(timeout=30)


def run_01_to_03(page: Page, url: str, out: Path) -> None:
    open_and_run_all(page, url, "01_dataset")
    wait_until_idle(page)
    shoot(code_cell(page, "size_preset(size"), out / "01-size.png")
    open_and_run_all(page, url, "02_models")
    wait_until_idle(page)

    open_and_run_all(page, url, "03_training")
    hand = code_cell(page, "hand_history).suptitle")
    hand.locator(".jp-OutputArea img").nth(1).wait_for(timeout=CELL_TIMEOUT_MS)   # the curves, the samples
    shoot(hand, out / "03-hand-loop.png")
    live = code_cell(page, "LivePlot(every_seconds")
    live.locator(".jp-OutputArea img").first.wait_for(timeout=CELL_TIMEOUT_MS)   # drawn before step 1
    time.sleep(12)   # a few redraws into epoch 1
    shoot(live, out / "03-start-of-training.png")
    wait_until_idle(page)
    shoot(live, out / "03-end-of-training.png")
    shoot(code_cell(page, "compare_runs("), out / "03-compare.png")
    guide = page.locator(".jp-MarkdownCell", has_text="What goes wrong in GAN training").first
    guide.locator("h2").first.scroll_into_view_if_needed()
    time.sleep(1)
    page.screenshot(path=str(out / "03-troubleshooting.png"))
    print("saved", out / "03-troubleshooting.png", flush=True)


def run_tweak(page: Page, url: str, out: Path) -> None:
    open_and_run_all(page, url, "03_training-tweak")
    wait_until_idle(page)
    shoot(code_cell(page, "LivePlot(every_seconds"), out / "03-tweak-lr_g.png")
    shoot(code_cell(page, "compare_runs("), out / "03-tweak-compare.png")


def run_04_to_06(page: Page, url: str, out: Path) -> None:
    open_and_run_all(page, url, "04_gif")
    wait_until_idle(page)
    shoot(code_cell(page, "choose_run("), out / "04-choice-of-run.png")
    shoot(code_cell(page, "make_gif("), out / "04-gif.png")

    open_and_run_all(page, url, "05_evaluate")
    wait_until_idle(page)
    shoot(code_cell(page, "results = "), out / "05-training.png")
    shoot(code_cell(page, "fid_estimate"), out / "05-fid.png")
    shoot(code_cell(page, "compare_runs(["), out / "05-comparison.png")
    shoot(code_cell(page, "interpolation_frames("), out / "05-latent-walk.png")

    open_and_run_all(page, url, "06_use_your_gan")
    explorer = wait_for_output(page, "FaceExplorer(", "one redraw")
    explorer.locator(".widget-hslider").first.wait_for(timeout=CELL_TIMEOUT_MS)
    shoot(explorer, out / "06-explorer.png")
    for slider, presses in ((0, 7), (2, 15)):   # the seed, then the first latent direction
        handle = explorer.locator(".widget-hslider .noUi-handle, .widget-hslider input").nth(slider)
        handle.focus()
        for _ in range(presses):
            page.keyboard.press("ArrowRight")
    time.sleep(3)
    shoot(explorer, out / "06-explorer-moved.png")
    wait_until_idle(page)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "generated" / "screenshots")
