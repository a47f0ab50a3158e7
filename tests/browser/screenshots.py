"""Look at the notebooks as a learner does: run them in JupyterLab in headless Chromium and screenshot what matters.

    make screenshots            # or: .venv/bin/python tests/browser/screenshots.py [OUT_DIR]

Needs Debian's `chromium` (`apt-get install chromium`) and the `playwright` Python package
(`.venv/bin/pip install playwright`; its own browser download, `playwright install`, is not used). Not part of
`make test`: it trains on the CPU for several minutes.

In a temporary copy of the repository layout (the checkout's data/ and generated/ stay untouched) it trains five
small one-epoch sibling runs with the CLI, then opens notebooks 03, 04 and 05 in JupyterLab with CPU settings written into
their parameters (papermill's injected-parameters cell, as `make demo` does), runs all their cells from the
browser and saves, under OUT_DIR (default generated/screenshots/):

    03-live-plot-mid-epoch.png   the training cell while epoch 1 trains
    03-compare-6-runs.png        "Compare your runs" with six runs
    03-troubleshooting.png       the first figures of the troubleshooting guide (cell attachments)
    04-gif-by-hand.png           the GIF written out by hand: the cell and what it wrote
    04-gif.png                   the GIF and its download link
    05-frechet.png               the Fréchet distance written out, beside the package's, on known answers
    05-slerp.png                 slerp written out, beside the package's
    05-latent-walk.png           the walk through the latent space
    06-explorer.png              06's sliders and faces as they first show
    06-explorer-moved.png        the same after moving the seed and direction sliders (redrawn in place)
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
# CPU settings: 32x32, widths 32, the 20,000 synthetic faces (an epoch long enough on a fast CPU for the live plot
# to be caught mid-epoch), 3 epochs; 03 also trains your own networks, so that the comparison has such a run
CPU_SETTINGS = {"image_size": 32, "g_width": 32, "d_width": 32}
TRAIN = {**CPU_SETTINGS, "epochs": 3, "batch_size": 64}
PARAMETERS = {
    "03_training": {**TRAIN, "manual_steps": 100, "manual_seconds": 20, "train_own_networks": True},
    "04_gif": {},
    "05_evaluate": {**TRAIN, "compute_fid": False},
    "06_use_your_gan": {"n_faces": 16},
}
SIBLINGS = ["--lr-g 1e-3", "--lr-d 4e-4", "--beta1 0.9", "--batch-size 32", "--lr-g 5e-3 --lr-d 1e-4"]
CELL_TIMEOUT_MS = 20 * 60 * 1000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prepare(work: Path) -> None:
    """The repository layout with the notebooks' CPU parameters injected, and five sibling runs already trained."""
    (work / "notebooks").mkdir(parents=True)
    (work / "utils").symlink_to(REPO / "utils", target_is_directory=True)
    for name, parameters in PARAMETERS.items():
        notebook = load_notebook_node(str(REPO / "notebooks" / f"{name}.ipynb"))   # as papermill reads it
        nbformat.write(parameterize_notebook(notebook, parameters) if parameters else notebook,
                       work / "notebooks" / f"{name}.ipynb")
    settings = work / "lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # every cell rendered (not only those in view), so that cells far down can be found and scrolled to
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    news = work / "lab-settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false",
                                                                       "checkForUpdates": False}))
    python = sys.executable
    for options in SIBLINGS:
        command = [python, "-m", "utils.train", "--data", "synthetic", "--device", "cpu",
                   *[f"--{key.replace('_', '-')}={value}" for key, value in CPU_SETTINGS.items()],
                   "--epochs=1",   # short: they are only there to be compared
                   *(options.split() if "--batch-size" in options else ["--batch-size", "64", *options.split()])]
        print("training a sibling run:", " ".join(command[2:]), flush=True)
        subprocess.run(command, cwd=work, check=True, stdout=subprocess.DEVNULL)


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
    time.sleep(2)
    page.get_by_text("Python 3 (ipykernel) | Idle").first.wait_for(timeout=CELL_TIMEOUT_MS)


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

                open_and_run_all(page, url, "03_training")
                live = code_cell(page, "LivePlot(every_seconds")
                live.locator(".jp-OutputArea img").first.wait_for(timeout=CELL_TIMEOUT_MS)   # drawn before step 1
                time.sleep(12)   # a few redraws into epoch 1, which takes longer than this at these settings
                if live.locator(".jp-OutputArea", has_text="epoch 1/3: loss_d").count():
                    print("warning: epoch 1 ended before the mid-epoch screenshot", flush=True)
                shoot(live, out / "03-live-plot-mid-epoch.png")
                compare = wait_for_output(page, "compare_runs(", "run(s) of")
                wait_until_idle(page)
                shoot(compare, out / "03-compare-6-runs.png")
                guide = page.locator(".jp-MarkdownCell", has_text="What goes wrong in GAN training").first
                guide.locator("h2").first.scroll_into_view_if_needed()
                time.sleep(1)
                page.screenshot(path=str(out / "03-troubleshooting.png"))
                print("saved", out / "03-troubleshooting.png", flush=True)

                open_and_run_all(page, url, "04_gif")
                shoot(wait_for_output(page, "by_hand.gif", "frames of"), out / "04-gif-by-hand.png")
                shoot(wait_for_output(page, "make_gif(", "the same GIF from a shell"), out / "04-gif.png")
                wait_until_idle(page)

                open_and_run_all(page, url, "05_evaluate")
                shoot(wait_for_output(page, "frechet_distance(*statistics)", "sampling moves"), out / "05-frechet.png")
                shoot(wait_for_output(page, "slerp_by_hand(z0, z1, 0.3)", "bit for bit"), out / "05-slerp.png")
                shoot(wait_for_output(page, "interpolation_frames(", "saved to"), out / "05-latent-walk.png")
                wait_until_idle(page)

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
                browser.close()
        finally:
            os.killpg(lab.pid, signal.SIGTERM)
            lab.wait(timeout=30)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "generated" / "screenshots")
