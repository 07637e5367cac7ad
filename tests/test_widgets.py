"""The explorer without a browser (tests/test_browser.py drives it in Chromium): real state in every control, the
threshold menu following the sampler, errors in the status line, display sizes, and previews fitted to the model."""
import json
from pathlib import Path
import pytest
from PIL import Image
from sd_from_scratch.widgets import (Explorer, THRESHOLDS, THRESHOLD_SETTINGS, colour_error, fit_preview, grid_shape,
                                    resize_for_display)

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="module")
def ex(one_thread):
    from sd_from_scratch.toy import load_default
    e = Explorer(load_default())
    e.steps.value, e.num.value = 4, 1
    return e

def test_defaults_are_selected_options(ex):
    assert (ex.threshold.index, ex.threshold.label, ex.threshold.value) == (0, "off", "off")
    assert ex.sampler.value == ex.pipe.default_sampler and ex.settings()["dynamic_threshold"] is None

def test_threshold_choices_are_what_they_say():
    "Static clipping caps s at 1; the dynamic choice lets s grow past 1 (with s_max = 1 it would be static clipping)."
    assert [label for label, _ in THRESHOLDS] == ["off", "static clip ±1", "Imagen dynamic, s ≤ 10"]
    assert THRESHOLD_SETTINGS["static"] == dict(dynamic_threshold=0.995, threshold_max=1.0)
    assert THRESHOLD_SETTINGS["dynamic"]["threshold_max"] > 1 and 0 < THRESHOLD_SETTINGS["dynamic"]["dynamic_threshold"] < 1

def test_dynamic_differs_from_static(ex):
    "On the trained model the two choices give different latents (they would be identical if s were capped at 1)."
    ex.sampler.value, out = "ddim", {}
    for key in ("static", "dynamic"):
        ex.threshold.value = key
        out[key] = ex.pipe(**{**ex.settings(), "steps": 4, "num_images": 1}, output_type="latent", progress=False)
    ex.threshold.value = "off"
    assert (out["static"] - out["dynamic"]).abs().max() > 1e-3

def test_threshold_follows_the_sampler(ex):
    ex.sampler.value, ex.threshold.value = "ddim", "dynamic"
    assert (ex.settings()["dynamic_threshold"], ex.settings()["threshold_max"]) == (0.995, 10.0)
    ex.sampler.value = "euler"
    assert (ex.threshold.value, ex.threshold.disabled, tuple(ex.threshold.options)) == ("off", True, THRESHOLDS[:1])
    assert "threshold turned off" in ex.message and "euler" in ex.message and "sdfs-warn" in ex.status.value
    ex.sampler.value = "ddim"
    assert not ex.threshold.disabled and len(ex.threshold.options) == len(THRESHOLDS)

def test_errors_show_in_the_status_line(ex):
    ex.seed.value = 10 ** 21                       # beyond torch's 64-bit generator
    ex.button.click()                              # the button: no exception escapes to the log console ...
    assert "seed must be an integer" in ex.message and "sdfs-error" in ex.status.value and not ex.button.disabled
    with pytest.raises(ValueError, match="seed must be an integer"): ex.generate()   # ... while a direct call still raises
    ex.seed.value = 0
    ex.button.click()
    assert ex.message.startswith("done: 1 image(s)") and ex.last_error is None

def test_display_sizes(ex):
    test = [(1, (1, 1)), (4, (1, 4)), (5, (2, 4)), (8, (2, 4))]
    assert [grid_shape(n) for n, _ in test] == [rc for _, rc in test]
    assert resize_for_display(Image.new("RGB", (64, 32)), 128).size == (128, 64)
    assert resize_for_display(Image.new("RGB", (512, 768)), 192).size == (192, 288)
    for n, (rows, cols) in [(1, (1, 1)), (5, (2, 4))]:
        ex.num.value = n; ex.generate()
        assert (ex.result.layout.width, ex.result.layout.height) == (f"{cols * ex.cell}px", f"{rows * ex.cell}px")
    assert (ex.preview.layout.width, ex.preview.layout.height) == ("128px", "128px")   # square latents
    ex.num.value = 1

def test_preview_is_fitted_to_the_model(ex):
    "The preview map fitted on the model's own samples: the last preview is close to the decoded image."
    pipe = ex.pipe
    z = pipe("a green 3 on a black background", steps=20, seed=5, output_type="latent", progress=False)
    decoded = pipe.postprocess(z, "pil")[0]
    own = colour_error(pipe.preview(z)[0], decoded)
    saved, pipe.latent_rgb = pipe.latent_rgb, None
    photo = colour_error(pipe.preview(z)[0], decoded)                 # the pipeline's own map (fitted on photos)
    pipe.latent_rgb = saved
    assert own < 0.12 and own < photo, (own, photo)
    ex.steps.value = 20; ex.generate(); ex.steps.value = 4
    assert ex.preview_error is not None and ex.preview_error < 0.15 and "colour error" in ex.message

def test_colour_error():
    a, b = Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 0))
    assert abs(colour_error(a, b) - 1 / 3) < 1e-6 and colour_error(a, a) == 0

def test_the_lesson_does_not_write_into_the_package():
    nb = json.loads((ROOT / "nbs" / "15_explorer.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "nbdev_export" not in code and "nbdev.export" not in code

def test_the_lesson_opens_into_its_kernel():
    nb = json.loads((ROOT / "nbs" / "15_explorer.ipynb").read_text())
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3"
