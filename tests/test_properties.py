"""Property-based test over the pipeline's arguments (hypothesis): every call either returns finite images of the
requested size and number, or raises ValueError/TypeError whose message names an offending argument.

Each strategy draws (value, ok) pairs, so the test knows which arguments it made invalid; a call with only valid
arguments must succeed, a call with an invalid one must fail with a message naming one of them. Small sizes and the
shipped toy model, a bounded, derandomized number of examples: seconds on CPU."""
import math
import numpy as np
import pytest, torch
from hypothesis import given, settings, strategies as st, HealthCheck

import sd_from_scratch
from sd_from_scratch.pipeline import SAMPLERS

@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    p = sd_from_scratch.load_default(device="cpu"); p.progress = False
    return p

def tagged(good, bad):
    "A strategy of (value, ok): `good` values are valid, `bad` ones are not."
    return st.one_of(good.map(lambda v: (v, True)), bad.map(lambda v: (v, False)))

NAN, INF = float("nan"), float("inf")
ARGS = {
    "steps": tagged(st.integers(1, 3) | st.just(np.int64(2)), st.sampled_from([0, -1, 2.0, "3", True, 1001])),
    "height": tagged(st.sampled_from([None, 8, 16, 24, 32, 48, np.int32(16)]), st.sampled_from([0, -8, 12, 33, 32.0, "32"])),
    "width": tagged(st.sampled_from([None, 8, 16, 40]), st.sampled_from([0, 20, 16.5])),
    "guidance_scale": tagged(st.floats(0, 12) | st.just(np.float32(3.0)), st.sampled_from([NAN, INF, -INF, -1.0, "7.5"])),
    "guidance_rescale": tagged(st.floats(0, 1), st.sampled_from([-0.5, 1.5, NAN])),
    "seed": tagged(st.none() | st.integers(0, 2**64 - 1) | st.just(np.int64(5)), st.sampled_from([-1, 2**64, 1.7, "1"])),
    "num_images": tagged(st.integers(1, 2) | st.just(np.int64(1)), st.sampled_from([0, -2, True, 1.0])),
    "sampler": tagged(st.sampled_from(SAMPLERS), st.sampled_from(["k_euler", "", 3])),
    "output_type": tagged(st.sampled_from(["np", "pt", "pil", "latent"]), st.sampled_from(["jpeg", None])),
    "generator": tagged(st.just(None), st.sampled_from(["cpu", 0])),
}

@st.composite
def calls(draw):
    kw, bad = {}, set()
    for name, strat in ARGS.items():
        if draw(st.booleans()) or name == "steps":                         # leave some at their defaults
            v, ok = draw(strat)
            kw[name] = v
            if not ok: bad.add(name)
    eta, ok = draw(tagged(st.sampled_from([0.0, 0.3]), st.sampled_from([NAN, -0.1])))
    if eta or not ok:
        kw["eta"] = eta
        if not ok: bad.add("eta")
    if kw.get("seed") is not None and kw.get("generator") is not None: bad |= {"seed", "generator"}
    return kw, bad

def check_result(pipe, out, kw):
    H = kw.get("height") if kw.get("height") is not None else pipe.default_hw[0]
    W = kw.get("width") if kw.get("width") is not None else pipe.default_hw[1]
    n, ot = int(kw.get("num_images", 1)), kw.get("output_type", "pil")
    if ot == "pil":
        assert len(out) == n and all(im.size == (W, H) for im in out)
        out = np.stack([np.asarray(im) for im in out])
    elif ot == "np": assert out.shape == (n, H, W, 3)
    elif ot == "pt": assert tuple(out.shape) == (n, 3, H, W) and 0 <= out.min() and out.max() <= 1
    else: assert tuple(out.shape) == (n, pipe.latent_channels, H // pipe.vae_scale_factor, W // pipe.vae_scale_factor)
    assert np.isfinite(np.asarray(out, dtype=np.float64)).all()

@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(call=calls())
def test_txt2img_arguments(pipe, call):
    kw, bad = call
    if kw.get("eta") and kw.get("sampler", pipe.default_sampler) != "ddim": bad = bad | {"eta"}   # η is DDIM's alone
    try: out = pipe("a red 7 on a blue background", **kw)
    except (ValueError, TypeError) as e:
        assert bad, f"valid arguments {kw} raised {type(e).__name__}: {e}"
        assert any(name in str(e) for name in bad), f"{type(e).__name__}: {e!s:.300} names none of {sorted(bad)} ({kw})"
        return
    assert not bad, f"invalid {sorted(bad)} accepted: {kw}"
    check_result(pipe, out, kw)

IMAGES = {  # (value, ok) — the range rule of prepare_image, for numpy and tensors alike
    "uint8": (lambda a: (a * 255).round().astype(np.uint8), True), "float01": (lambda a: a, True),
    "float255": (lambda a: a * 255, True), "tensor01": (lambda a: torch.from_numpy(a).permute(2, 0, 1), True),
    "tensor_signed": (lambda a: torch.from_numpy(a * 2 - 1).permute(2, 0, 1), True),
    "tensor255": (lambda a: torch.from_numpy(a * 255).permute(2, 0, 1), True),
    "too_big": (lambda a: a * 1000, False), "nan": (lambda a: a * np.nan, False),
    "neg_big": (lambda a: torch.from_numpy(a * 4 - 2).permute(2, 0, 1), False), "none": (lambda a: None, False),
}

@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(IMAGES)), strength=tagged(st.sampled_from([0.5, 1.0, np.float64(0.75)]), st.sampled_from([-0.1, 1.5, NAN])),
       side=st.sampled_from([16, 32]))
def test_img2img_image_and_strength(pipe, kind, strength, side):
    a = np.random.default_rng(side).uniform(0, 1, (side, side, 3)).astype(np.float32)
    make, ok_image = IMAGES[kind]
    (s, ok_s) = strength
    bad = ({"image"} if not ok_image else set()) | ({"strength"} if not ok_s else set())
    try: out = pipe.img2img("a red 7", make(a), strength=s, steps=2, output_type="np")
    except (ValueError, TypeError) as e:
        assert bad and any(n in str(e) for n in bad), f"{kind}, strength {s}: {type(e).__name__}: {e}"
        return
    assert not bad, f"{kind}, strength {s} accepted"
    assert out.shape == (1, side, side, 3) and np.isfinite(out).all()
