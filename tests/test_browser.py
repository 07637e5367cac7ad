"""The explorer as a learner meets it: JupyterLab in headless Chromium, Run All, then the controls by hand.

Starts JupyterLab (no token, 127.0.0.1, a free port, a temporary root holding a copy of nbs/15_explorer.ipynb),
runs all cells, types a prompt, moves a slider, presses Generate and checks what is on the screen: the results
changed and show the prompt (read back by the shipped digit classifier), the preview keeps its aspect ratio, the
result grid has a sensible size, and an invalid choice and an error during Generate are both visible messages.
Everything it starts is stopped again. Chromium and chromedriver come from the system (`.ci/run` installs them);
without them the test skips. Set SDFS_SCREENSHOTS=DIR to save the explorer before/after Generate as PNGs."""
import base64, io, json, os, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "nbs" / "15_explorer.ipynb"
BUDGET_S = float(os.environ.get("SDFS_BROWSER_BUDGET_S", 180))   # the whole test, JupyterLab start to shutdown
PROMPT = "a green 3 on a black background"
CELL = 192                         # Explorer's default result width per image
PREVIEW_W = 128                    # Explorer's default preview width


def _find(*names):
    for n in names:
        p = shutil.which(n) or (f"/usr/bin/{n}" if Path(f"/usr/bin/{n}").exists() else None)
        if p: return p

CHROMIUM = _find("chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER = _find("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="no chromium/chromedriver on PATH (`.ci/run` installs them: apt-get install chromium chromium-driver)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


class Deadline:
    "One clock for the whole test, so that every wait together stays within BUDGET_S."
    def __init__(self, seconds): self.end = time.monotonic() + seconds
    def left(self): return self.end - time.monotonic()
    def wait(self, what: str, fn, at_most: float, every: float = 0.25):
        "Poll `fn()` until it returns something truthy (returned) or `at_most` seconds (capped by the budget) pass."
        end = time.monotonic() + max(1.0, min(at_most, self.left()))
        last = None
        while time.monotonic() < end:
            try:
                v = fn()
                if v: return v
            except Exception as e:          # the page may be mid-render; keep polling
                last = e
            time.sleep(every)
        raise AssertionError(f"timed out waiting for {what}" + (f" (last error: {last!r})" if last else ""))


def _stop_process_tree(proc: subprocess.Popen):
    "SIGTERM the server (it shuts its kernels down), then kill whatever of its process tree is left."
    try:
        import psutil
        tree = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    except Exception:
        tree = [proc.pid]
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT); time.sleep(0.3)
        proc.send_signal(signal.SIGINT) if proc.poll() is None else None   # jupyter asks to confirm the first ^C
        try: proc.wait(15)
        except subprocess.TimeoutExpired: proc.terminate()
        try: proc.wait(10)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait(5)
    for pid in tree[1:]:
        try: os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError): pass


@pytest.fixture
def lab(tmp_path):
    "A JupyterLab server on 127.0.0.1 with no token, rooted in a temporary folder with a copy of the explorer lesson."
    root = tmp_path / "root"; root.mkdir()
    shutil.copy(NB, root / NB.name)
    if (NB.parent / "images").exists(): shutil.copytree(NB.parent / "images", root / "images")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "JUPYTER_TOKEN")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", IPYTHONDIR=str(tmp_path / "ipython"),
               JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter_config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter_runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "lab_settings"), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "lab_workspaces"))
    news = tmp_path / "lab_settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)       # no "get notified about news?" toast, no update check: nothing from outside
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    jupyter = Path(sys.executable).parent / "jupyter"
    log = open(tmp_path / "jupyter.log", "w")
    proc = subprocess.Popen([str(jupyter), "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                             "--ServerApp.port_retries=0", "--ServerApp.token=", "--ServerApp.password=", "--allow-root",
                             f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
                             "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                             "--LabApp.extension_manager=readonly"],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        yield url, root, tmp_path / "jupyter.log"
    finally:
        _stop_process_tree(proc); log.close()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(a)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        if service.process and service.process.poll() is None: service.process.kill()


# --- reading the page ------------------------------------------------------------------------------------------------
def _q(driver, css):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, css)

# The notebook's widget: the shell's current one, or (JupyterLab ≥ 4.6 in a headless window that never has focus, where
# shell.currentWidget stays null) the notebook in the main area.
_NB_JS = """const _nb = () => { const s = window.jupyterapp && window.jupyterapp.shell; if (!s) return null;
    return s.currentWidget || Array.from(s.widgets('main')).find(x => x.sessionContext) || null; };"""

def _command(driver, cmd: str):
    "Run a JupyterLab command on the notebook, made the active widget first (notebook commands act on the active one)."
    driver.execute_script(_NB_JS + "const w = _nb(); if (w) window.jupyterapp.shell.activateById(w.id);"
                          " window.jupyterapp.commands.execute(arguments[0]);", cmd)        # not awaited: run-all resolves when all cells are done

def _notebook_state(driver) -> dict:
    "Kernel status, dialogs, and how many code cells have run and what they output, from JupyterLab's own models."
    return driver.execute_script(_NB_JS + """
        const w = _nb();
        if (!w || !w.content || !w.sessionContext || !w.sessionContext.session) return null;
        const cells = w.content.widgets.filter(c => c.model.type === 'code');
        const outs = cells.flatMap(c => c.model.outputs.toJSON());
        const k = w.sessionContext.session.kernel;
        const text = t => (Array.isArray(t) ? t.join('') : String(t)).slice(0, 400);
        return {kernel: k ? k.status : null, dialog: !!document.querySelector('.jp-Dialog'),
                code: cells.length, done: cells.filter(c => c.model.executionCount).length,
                errors: outs.filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue),
                stderr: outs.filter(o => o.output_type === 'stream' && o.name === 'stderr').map(o => text(o.text))};
    """)

def _img_info(driver, css) -> dict:
    "Displayed size, natural size and PNG bytes (base64) of the <img> under `css`."
    return driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const img = document.querySelector(arguments[0] + ' img') || document.querySelector('img' + arguments[0]);
        if (!img || !img.src || !img.complete || !img.naturalWidth) { done(null); return; }
        const r = img.getBoundingClientRect();
        fetch(img.src).then(x => x.blob()).then(b => { const f = new FileReader();
            f.onload = () => done({w: r.width, h: r.height, nw: img.naturalWidth, nh: img.naturalHeight,
                                   src: img.src, png: f.result.split(',')[1]});
            f.readAsDataURL(b); }).catch(() => done(null));
    """, css)

def _status(driver) -> str:
    return _q(driver, ".sdfs-status").text

def _screenshot(driver, element, path):
    "A PNG of just `element`, scrolled to the top of the notebook's viewport first."
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", element); time.sleep(0.5)
    element.screenshot(str(path))

def _errors_shown(driver) -> bool:
    from selenium.webdriver.common.by import By
    return bool(driver.find_elements(By.CSS_SELECTOR, ".sdfs-status .sdfs-error"))

def _read_results(png_b64: str, n: int, native: int):
    "Split the result grid into its n cells, shrink each back to native size, read digit/colours with the toy classifier."
    import numpy as np, torch
    from PIL import Image
    from sd_from_scratch.toy import COLOURS, load_digit_classifier, read_images
    grid = Image.open(io.BytesIO(base64.b64decode(png_b64))).convert("RGB")
    cols = min(n, 4)
    cells = [grid.crop(((i % cols) * CELL, (i // cols) * CELL, (i % cols + 1) * CELL, (i // cols + 1) * CELL)).resize((native, native), Image.NEAREST)
             for i in range(n)]
    x = torch.tensor(np.stack([np.asarray(c) for c in cells])).permute(0, 3, 1, 2).float() / 255
    r = read_images(x, load_digit_classifier())
    return [(int(d), COLOURS[f], COLOURS[b]) for d, f, b in zip(r["digit"], r["fg"], r["bg"])]


def test_explorer_in_a_real_browser(lab, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select
    t0 = time.monotonic(); clock = Deadline(BUDGET_S - 15)        # leave time to shut everything down
    url, root, server_log = lab
    shots = os.environ.get("SDFS_SCREENSHOTS")

    def up():
        with urllib.request.urlopen(f"{url}/api/status", timeout=2) as r: return r.status == 200
    try: clock.wait("JupyterLab to answer on " + url, up, 60)
    except AssertionError as e: raise AssertionError(f"{e}; its log ends:\n{server_log.read_text()[-3000:]}") from None

    # Open the lesson: it must go straight into its kernel (no "Select Kernel" dialog), then Run All.
    browser.get(f"{url}/lab/tree/{NB.name}")
    st = clock.wait("the notebook and its kernel", lambda: (s := _notebook_state(browser)) and (s["dialog"] or s["kernel"] == "idle") and s, 60)
    assert not st["dialog"], "a dialog opened with the notebook (no kernelspec in its metadata? it should open into python3)"
    _command(browser, "notebook:clear-all-cell-outputs")   # so that
    clock.wait("the saved outputs to clear", lambda: _notebook_state(browser)["done"] == 0, 10)        # we see this run's
    t_open = time.monotonic()
    _command(browser, "notebook:run-all-cells")
    st = clock.wait("Run All to finish", lambda: (s := _notebook_state(browser)) and (s["errors"] or (s["kernel"] == "idle"
                    and s["done"] == s["code"])) and s, BUDGET_S, 0.5)
    t_run = time.monotonic()
    assert not st["errors"], f"a cell raised during Run All: {st['errors']}"
    assert not st["stderr"], f"cells wrote to stderr (pink boxes a learner has to read past): {st['stderr']}"

    # The explorer's controls show their real values; the default threshold is a selected option, not a blank.
    explorer = _q(browser, ".sdfs-widget")
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", explorer)
    threshold = Select(_q(browser, ".sdfs-threshold select"))
    assert threshold.first_selected_option.text == "off"
    assert Select(_q(browser, ".sdfs-sampler select")).first_selected_option.text == "ddim"
    before = clock.wait("the result image from Run All", lambda: _img_info(browser, ".sdfs-result"), 10)
    pv0 = pv = _img_info(browser, ".sdfs-preview")     # the last step's preview of Run All, really laid out at its size
    assert pv and abs(pv["w"] - PREVIEW_W) <= 1 and abs(pv["h"] - PREVIEW_W * pv["nh"] / pv["nw"]) <= 1, pv
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True); _screenshot(browser, explorer, Path(shots) / "15_explorer_before.png")

    # Type a new prompt, move the "images" slider from 1 (the last cell left it there) to 5 with the keyboard.
    box = _q(browser, ".sdfs-prompt input")
    box.click(); box.send_keys(Keys.CONTROL, "a"); box.send_keys(Keys.DELETE); box.send_keys(PROMPT, Keys.TAB)
    handle = _q(browser, ".sdfs-num .noUi-handle")
    handle.click()
    for _ in range(4): handle.send_keys(Keys.ARROW_RIGHT)
    clock.wait("the images slider to read 5", lambda: _q(browser, ".sdfs-num .widget-readout").text.strip() == "5", 10)
    _q(browser, ".sdfs-button").click()
    clock.wait("Generate to finish", lambda: "done: 5 image(s)" in _status(browser) or _errors_shown(browser), 60, 0.2)
    assert "done: 5 image(s)" in _status(browser), _status(browser)
    after = clock.wait("the new results on screen", lambda: (i := _img_info(browser, ".sdfs-result")) and i["src"] != before["src"] and i, 10)
    if shots: _screenshot(browser, explorer, Path(shots) / "15_explorer_after.png")

    # The results changed, and they are what the prompt asked for (read back by the shipped digit classifier).
    assert after["png"] != before["png"]
    read = _read_results(after["png"], 5, native=32)
    good = sum(r == (3, "green", "black") for r in read)
    assert good >= 4, f"the results don't show {PROMPT!r}: {read}"
    # Sensible sizes: five results as a 4-column grid of 192-px cells, displayed at their own pixel size.
    assert (after["nw"], after["nh"]) == (4 * CELL, 2 * CELL), after
    assert abs(after["w"] - after["nw"]) <= 1 and abs(after["h"] - after["nh"]) <= 1, (after["w"], after["h"])
    # The preview keeps the latents' aspect ratio (square) at its fixed width, not stretched to the controls' height.
    pv = _img_info(browser, ".sdfs-preview")
    assert pv["png"] != pv0["png"], "the preview did not follow the new run"
    assert abs(pv["w"] - PREVIEW_W) <= 1 and abs(pv["h"] - PREVIEW_W * pv["nh"] / pv["nw"]) <= 1, pv
    assert pv["nw"] == pv["nh"], pv

    # An invalid combination is prevented and explained: dynamic thresholding, then a sampler that cannot threshold.
    threshold.select_by_visible_text("Imagen dynamic, s ≤ 10")
    sampler = Select(_q(browser, ".sdfs-sampler select"))
    sampler.select_by_visible_text("euler")
    msg = clock.wait("the explanation for euler + thresholding", lambda: "threshold turned off" in _status(browser) and _q(browser, ".sdfs-status"), 10)
    assert msg.is_displayed() and "euler" in msg.text
    threshold = Select(_q(browser, ".sdfs-threshold select"))
    assert threshold.first_selected_option.text == "off" and not _q(browser, ".sdfs-threshold select").is_enabled()
    sampler.select_by_visible_text("ddim")

    # An error raised during Generate shows in the explorer, with its message: a seed beyond torch's 64 bits.
    seed = _q(browser, ".sdfs-seed input")
    seed.click(); seed.send_keys(Keys.CONTROL, "a"); seed.send_keys("1000000000000000000000", Keys.ENTER)
    time.sleep(0.3)
    _q(browser, ".sdfs-button").click()
    err = clock.wait("the error message in the status line", lambda: _errors_shown(browser) and _q(browser, ".sdfs-status .sdfs-error"), 30, 0.2)
    assert err.is_displayed() and "seed must be an integer" in err.text, err.text
    assert _q(browser, ".sdfs-button").is_enabled()        # the explorer still works afterwards

    took = time.monotonic() - t0
    print(f"browser test: {took:.0f} s (JupyterLab up and notebook open {t_open - t0:.0f} s, Run All {t_run - t_open:.0f} s, "
          f"the rest {time.monotonic() - t_run:.0f} s); results read as {read}")
    assert took < BUDGET_S - 10, f"took {took:.0f} s, more than the budget"
