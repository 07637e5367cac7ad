"""LoRA, textual inversion and prompt weighting (lesson 12a, lesson 04) on the shipped toy model, against diffusers.

diffusers' `load_lora_weights` needs the `peft` package; where it is missing those comparisons are skipped and the
same merge is checked against diffusers' own kohya→diffusers key conversion plus a hand merge on diffusers' modules."""
import importlib.util, os, pickle
from pathlib import Path
import numpy as np
import pytest
import torch

import sd_from_scratch
import sd_from_scratch.adapters as A
from sd_from_scratch import toy

TOL = 2e-3                     # on [0, 1] pixels, the project's bar for "same image"
KW = dict(steps=6, seed=0, output_type="np", guidance_scale=4.0)
PROMPT = "a red 3 on a blue background"
HAS_PEFT = importlib.util.find_spec("peft") is not None


@pytest.fixture(scope="module")
def pipe(one_thread):
    p = sd_from_scratch.load_default(); p.progress = False
    return p


@pytest.fixture(scope="module")
def base(pipe): return pipe(PROMPT, **KW)


@pytest.fixture(scope="module")
def dpipe(one_thread):
    from diffusers import StableDiffusionPipeline
    p = StableDiffusionPipeline.from_pretrained(toy.default_model_path(), safety_checker=None)
    p.set_progress_bar_config(disable=True)
    return p


def dimg(dp, prompt=PROMPT, **kw):
    return dp(prompt, num_inference_steps=KW["steps"], guidance_scale=KW["guidance_scale"], output_type="np",
              generator=torch.Generator().manual_seed(0), **kw).images


def rand_lora(pipe, components=("unet",), rank=4, std=0.15, layout="diffusers", conv=True, alpha=None, seed=0):
    "A random LoRA on the attention (and ResNet conv) layers, in either file layout."
    g = torch.Generator().manual_seed(seed); sd = {}
    for comp in components:
        model = getattr(pipe, comp)
        for n in A.default_lora_targets(model, comp, conv=conv):
            w = model.get_submodule(n).weight
            down = torch.randn(rank, *w.shape[1:], generator=g) * std
            up = torch.randn(w.shape[0], rank, *[1] * (w.ndim - 2), generator=g) * std
            if layout == "diffusers":
                sd[f"{comp}.{n}.lora_A.weight"], sd[f"{comp}.{n}.lora_B.weight"] = down, up
                if alpha is not None: sd[f"{comp}.{n}.alpha"] = torch.tensor(float(alpha))
            else:
                k = ("lora_unet_" if comp == "unet" else "lora_te_") + n.replace(".", "_")
                sd[k + ".lora_down.weight"], sd[k + ".lora_up.weight"] = down, up
                sd[k + ".alpha"] = torch.tensor(float(alpha if alpha is not None else rank))
    return sd


# ---------------------------------------------------------------- LoRA
def test_lora_changes_and_unload_restores_exactly(pipe, base):
    w0 = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora_weights(rand_lora(pipe))
    assert np.abs(pipe(PROMPT, **KW) - base).max() > 0.05            # the LoRA does something
    pipe.unload_lora_weights()
    assert np.abs(pipe(PROMPT, **KW) - base).max() == 0               # and is gone without a trace
    assert all(torch.equal(w0[k], v) for k, v in pipe.unet.state_dict().items())


def test_kohya_and_diffusers_layouts_agree(pipe, base):
    outs = []
    for layout in ("diffusers", "kohya"):
        pipe.load_lora_weights(rand_lora(pipe, ("unet", "text_encoder"), layout=layout, alpha=2.0)); outs.append(pipe(PROMPT, **KW))
        pipe.unload_lora_weights()
    assert np.abs(outs[0] - base).max() > 0.05
    assert np.abs(outs[0] - outs[1]).max() <= 1e-6


def test_scale_and_alpha_are_the_same_factor(pipe):
    "scale·α/r multiplies B·A: (scale 0.5, α = r) ≡ (scale 1, α = r/2)."
    pipe.load_lora_weights(rand_lora(pipe), scale=0.5); a = pipe(PROMPT, **KW); pipe.unload_lora_weights()
    pipe.load_lora_weights(rand_lora(pipe, alpha=2.0)); b = pipe(PROMPT, **KW); pipe.unload_lora_weights()
    assert np.abs(a - b).max() <= 1e-5


def test_stacking_is_the_sum(pipe):
    l1, l2 = rand_lora(pipe, seed=1, std=0.1), rand_lora(pipe, seed=2, std=0.1)
    pipe.load_lora_weights(l1).load_lora_weights(l2)
    assert len(pipe.loras) == 2
    w = pipe.unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn2.to_k").weight.clone()
    pipe.unload_lora_weights()
    w0 = pipe.unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn2.to_k").weight
    k = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k"
    want = w0 + sum(l[k + ".lora_B.weight"] @ l[k + ".lora_A.weight"] for l in (l1, l2))
    torch.testing.assert_close(w, want, atol=1e-6, rtol=0)


def test_unknown_keys_are_listed(pipe):
    sd = rand_lora(pipe)
    sd["unet.down_blocks.9.attentions.0.to_q.lora_A.weight"] = torch.zeros(4, 8)
    sd["something_else.weight"] = torch.zeros(1)
    before = pipe.unet.state_dict()["conv_out.weight"].clone()
    with pytest.raises(KeyError, match="2 key.*down_blocks.9.*something_else"):
        pipe.load_lora_weights(sd)
    assert not getattr(pipe, "loras", [])                                # nothing was merged
    torch.testing.assert_close(pipe.unet.state_dict()["conv_out.weight"], before, atol=0, rtol=0)


def test_text_encoder_names_without_text_model(pipe):
    "transformers 5 names the text encoder's layers without `text_model.`; such files fit the same layers."
    sd = rand_lora(pipe, ("text_encoder",), conv=False)
    short = {k.replace("text_encoder.text_model.", "text_encoder."): v for k, v in sd.items()}
    pipe.load_lora_weights(sd); a = pipe(PROMPT, **KW); pipe.unload_lora_weights()
    pipe.load_lora_weights(short); b = pipe(PROMPT, **KW); pipe.unload_lora_weights()
    assert np.abs(a - b).max() == 0


def test_wrong_shape_is_an_error(pipe):
    sd = {"unet.conv_out.lora_A.weight": torch.zeros(4, 7, 3, 3), "unet.conv_out.lora_B.weight": torch.zeros(4, 4, 1, 1)}
    with pytest.raises(ValueError, match="does not fit a weight"):
        pipe.load_lora_weights(sd)
    with pytest.raises(KeyError, match="needs both"):
        pipe.load_lora_weights({"unet.conv_out.lora_A.weight": torch.zeros(4, 32, 3, 3)})


def test_old_diffusers_attention_processor_names(pipe):
    "diffusers' older `…attn1.processor.to_q_lora.down.weight` spelling lands on the same layer."
    sd = rand_lora(pipe, conv=False)
    old = {}
    for k, v in sd.items():
        k = k.replace(".lora_A.weight", ".lora.down.weight").replace(".lora_B.weight", ".lora.up.weight")
        for p in ("to_q", "to_k", "to_v"): k = k.replace(f".{p}.lora.", f".processor.{p}_lora.")
        old[k.replace(".to_out.0.lora.", ".processor.to_out_lora.")] = v
    pipe.load_lora_weights(sd); a = pipe(PROMPT, **KW); pipe.unload_lora_weights()
    pipe.load_lora_weights(old); b = pipe(PROMPT, **KW); pipe.unload_lora_weights()
    assert np.abs(a - b).max() == 0


def test_lora_file_round_trip(pipe, tmp_path):
    from safetensors.torch import save_file
    sd = rand_lora(pipe, layout="kohya")
    save_file(sd, tmp_path / "style.safetensors")
    torch.save(sd, tmp_path / "style.pt")
    pipe.load_lora_weights(sd); a = pipe(PROMPT, **KW); pipe.unload_lora_weights()
    for f in ("style.safetensors", "style.pt"):
        pipe.load_lora_weights(tmp_path / f); assert pipe.loras[0]["name"] == "style"
        assert np.abs(pipe(PROMPT, **KW) - a).max() == 0; pipe.unload_lora_weights()


@pytest.mark.skipif(not HAS_PEFT, reason="diffusers' load_lora_weights needs peft")
@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("layout", ["diffusers", "kohya"])
def test_unet_lora_same_images_as_diffusers(pipe, dpipe, scale, layout):
    sd = rand_lora(pipe, layout=layout, alpha=2.0 if layout == "kohya" else None)
    dpipe.load_lora_weights({k: v.clone() for k, v in sd.items()}); dpipe.fuse_lora(lora_scale=scale)
    try: theirs = dimg(dpipe)
    finally: dpipe.unfuse_lora(); dpipe.unload_lora_weights()
    pipe.load_lora_weights(sd, scale=scale); ours = pipe(PROMPT, **KW); pipe.unload_lora_weights()
    assert np.abs(ours - theirs).max() <= TOL


def _diffusers_module(comp, key):
    "A key of diffusers' converted state dict → the layer it adapts (diffusers' spelling, read independently of ours)."
    k = key.rsplit(".down.weight", 1)[0]
    for suf in (".lora", ".lora_linear_layer"):
        if k.endswith(suf): k = k[:-len(suf)]
    k = k.replace(".processor.", ".")
    old = {"to_q_lora": ("to_q", "q_proj"), "to_k_lora": ("to_k", "k_proj"), "to_v_lora": ("to_v", "v_proj"),
           "to_out_lora": ("to_out.0", "out_proj")}
    for a, (u, t) in old.items():
        if k.endswith(a): k = k[:-len(a)] + (u if comp == "unet" else t)
    return k


def test_lora_same_images_as_a_merge_on_diffusers_modules(pipe, dpipe):
    """No peft needed: diffusers' own kohya→diffusers key conversion, merged by hand into diffusers' UNet and
    transformers' text encoder (peft 0.21 is too old for transformers' adapters), at scale 1 and 0.5."""
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers
    sd = rand_lora(pipe, ("unet", "text_encoder"), layout="kohya", alpha=2.0)      # rank 4, α 2 everywhere
    conv, alphas = _convert_non_diffusers_lora_to_diffusers({k: v.clone() for k, v in sd.items()})
    assert set(alphas.values()) == {2.0}
    for scale in (1.0, 0.5):
        originals = {}
        with torch.no_grad():
            for k, down in conv.items():
                if not k.endswith(".down.weight"): continue
                comp, key = k.split(".", 1)
                name = _diffusers_module(comp, key)
                if comp == "text_encoder" and not hasattr(dpipe.text_encoder, "text_model"):
                    name = name.removeprefix("text_model.")                # transformers 5 has no `text_model.`
                layer = getattr(dpipe, comp).get_submodule(name)
                up = conv[k[:-len(".down.weight")] + ".up.weight"]
                originals[(comp, name)] = layer.weight.clone()
                layer.weight += scale * 2.0 / 4 * (up.flatten(1) @ down.flatten(1)).view(layer.weight.shape)
        try: theirs = dimg(dpipe)
        finally:
            with torch.no_grad():
                for (comp, name), w in originals.items(): getattr(dpipe, comp).get_submodule(name).weight.copy_(w)
        assert len(originals) == len(sd) // 3
        pipe.load_lora_weights(sd, scale=scale); ours = pipe(PROMPT, **KW); pipe.unload_lora_weights()
        assert np.abs(ours - base_of(pipe)).max() > 0.05
        assert np.abs(ours - theirs).max() <= TOL


def base_of(p): return p(PROMPT, **KW)


# ---------------------------------------------------------------- textual inversion
@pytest.fixture
def fresh(one_thread):
    p = sd_from_scratch.load_default(); p.progress = False
    return p


def _vec(p, word): return p.text_encoder.text_model.embeddings.token_embedding.weight[p.tokenizer.encode(word)[1]].clone()


def test_textual_inversion_formats_same_images_as_diffusers(fresh, tmp_path, one_thread):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file
    purple, green, blue = _vec(fresh, "purple"), _vec(fresh, "green"), _vec(fresh, "blue")
    torch.save({"string_to_param": {"*": purple[None]}, "name": "<violet>", "step": 100}, tmp_path / "violet.pt")
    save_file({"emb_params": torch.stack([green, blue])}, tmp_path / "sea.safetensors")
    torch.save({"<leaf>": green}, tmp_path / "learned_embeds.bin")
    dp = StableDiffusionPipeline.from_pretrained(toy.default_model_path(), safety_checker=None)
    dp.set_progress_bar_config(disable=True)
    assert fresh.load_textual_inversion(tmp_path / "violet.pt") == ["<violet>"]
    assert fresh.load_textual_inversion(tmp_path / "sea.safetensors", token="<sea>") == ["<sea>", "<sea>_1"]
    assert fresh.load_textual_inversion(tmp_path / "learned_embeds.bin") == ["<leaf>"]
    dp.load_textual_inversion(str(tmp_path / "violet.pt"))
    dp.load_textual_inversion(str(tmp_path / "sea.safetensors"), token="<sea>")
    dp.load_textual_inversion(str(tmp_path / "learned_embeds.bin"))
    for p in ["a <violet> 3 on a white background", "a <sea> 5 on a black background", "a <leaf> 7 on a <violet> background"]:
        assert np.abs(fresh(p, **KW) - dimg(dp, p)).max() <= TOL
    # the learned word works like the word it copies
    assert np.abs(fresh("a <violet> 3 on a white background", **KW) - fresh("a purple 3 on a white background", **KW)).max() == 0


def test_textual_inversion_errors(fresh):
    with pytest.raises(ValueError, match="size 16.*have 32"):
        fresh.load_textual_inversion({"<x>": torch.zeros(16)})
    with pytest.raises(ValueError, match="already in the tokenizer"):
        fresh.load_textual_inversion({"red</w>": torch.zeros(32)})
    with pytest.raises(ValueError, match="not a textual-inversion file"):
        fresh.load_textual_inversion({"a": torch.zeros(32), "b": torch.zeros(32)})
    fresh.load_textual_inversion({"<x>": torch.zeros(32)})
    with pytest.raises(ValueError, match="already"):
        fresh.load_textual_inversion({"<x>": torch.zeros(32)})


class _Payload:
    "Unpickling this would run code (create a file)."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.makedirs, (self.marker,))


def test_pickle_payload_never_runs(fresh, tmp_path):
    marker = str(tmp_path / "pwned")
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"string_to_param": {"*": _Payload(marker)}, "name": "<evil>"}, f)
    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}, "name": "<ok>", "x": _Payload(marker)}, tmp_path / "evil2.pt")
    for f in ("evil.pt", "evil2.pt"):
        with pytest.raises(ValueError, match="could run code"):
            fresh.load_textual_inversion(tmp_path / f)
        with pytest.raises(ValueError, match="could run code"):
            fresh.load_lora_weights(tmp_path / f)
    assert not Path(marker).exists()
    assert "<evil>" not in fresh.tokenizer.added_tokens and "<ok>" not in fresh.tokenizer.added_tokens


# ---------------------------------------------------------------- prompt weighting and long prompts
def _images_from_context(p, context, guidance_scale=7.5, steps=20, seed=0, n=1):
    "The txt2img loop of lesson 10 from a given context (until `pipe(..., prompt_weighting=True)` is threaded through)."
    from sd_from_scratch.pipeline import run_sampler
    from sd_from_scratch.vae import randn_tensor
    g = torch.Generator().manual_seed(seed)
    B = context.shape[0] // 2
    noise = randn_tensor((B, p.latent_channels, *[s // p.vae_scale_factor for s in p.default_hw]), g, p.device, p.dtype)
    z = run_sampler(p._eps_model(context, guidance_scale), noise.float(), p.default_sampler, steps, p.scheduler_config, g, progress=False)
    return p.postprocess(z, "pt")


def test_plain_prompt_is_unchanged_by_weighting(pipe):
    a = pipe.encode_prompt(["a red 3 on a blue background", "a 7"], "blurry", prompt_weighting=True)
    b = pipe.encode_prompt(["a red 3 on a blue background", "a 7"], "blurry")
    assert torch.equal(a, b)


def test_long_prompts_are_chunked_and_negative_padded(pipe):
    long = ", ".join(["a red 3 on a blue background"] * 12)          # 12·7 + 11 commas = 95 tokens → 2 chunks
    c = pipe.encode_prompt(long, "blue", num_images=2, prompt_weighting=True)
    assert c.shape == (4, 154, 32)
    c2 = pipe.encode_prompt("a red 3", long, prompt_weighting=True)     # the negative is the long one
    assert c2.shape == (2, 154, 32)
    empty = pipe.encode_prompt("", guidance=False)
    assert torch.equal(c2[1, 77:], empty[0])                           # the short prompt padded with "" chunks
    first = ", ".join(["a red 3 on a blue background"] * 9) + ","      # 72 tokens: the comma-backtrack cut
    assert torch.equal(c[2, :77], pipe.encode_prompt(first, guidance=False)[0])


def test_weight_of_red_changes_how_red_the_ink_is(pipe):
    """On the toy model, measured: the ink's red minus green over 10 digits for "a (red:w) {d} on a white background".
    The weight changes it (by more than 0.05 between w = 1 and 2). Its direction on this tiny model is the surprise of
    lesson 12a: louder "red" gives *less* red ink (the two-layer causal encoder already spreads "red" into every later
    token; the scaled vector lies off what the UNet saw). Measured: 0.78 (w = 1) → 0.64 (w = 2)."""
    clf = toy.load_digit_classifier()
    redness = {}
    for w in (1.0, 2.0):
        prompts = [f"a (red:{w}) {d} on a white background" for d in range(10)]
        ctx = pipe.encode_prompt(prompts, prompt_weighting=True)
        x = _images_from_context(pipe, ctx, steps=12)
        r = toy.read_images(x, clf)
        m = r["mask"] > 0.7
        ink = torch.stack([x[i].permute(1, 2, 0)[m[i]].mean(0) for i in range(len(x))])       # 10×3
        redness[w] = (ink[:, 0] - ink[:, 1]).mean().item()
    assert redness[1.0] - redness[2.0] > 0.05, redness


# ---------------------------------------------------------------- training, saving, the command-line helpers
def _orange(n=32):
    masks, labels = toy.load_digits()["train"]
    imgs = toy.render(masks[:n], torch.tensor([1.0, 0.55, 0.0]).expand(n, 3), torch.ones(n, 3)) * 2 - 1
    return imgs, [f"a orange {int(d)} on a white background" for d in labels[:n]]


def test_trained_lora_is_what_loading_merges(fresh, tmp_path):
    "The parametrized model during training = the merged model after saving and loading (both layouts)."
    imgs, caps = _orange()
    w0 = {k: v.clone() for k, v in fresh.unet.state_dict().items()}
    loras, losses = A.train_lora(fresh, imgs, caps, rank=2, alpha=1.0, steps=3, batch_size=4, lr=5e-2, progress=False)
    assert len(losses) == 3 and set(loras) == {"unet", "text_encoder"}
    training = fresh("a orange 3 on a white background", **KW)
    for layout in ("diffusers", "kohya"): A.save_lora(loras, tmp_path / f"o_{layout}.safetensors", layout)
    A.remove_lora(fresh.unet); A.remove_lora(fresh.text_encoder)
    assert all(torch.equal(w0[k], v) for k, v in fresh.unet.state_dict().items())       # LoRA off: untouched
    plain = fresh("a orange 3 on a white background", **KW)
    assert np.abs(training - plain).max() > 1e-3
    for layout in ("diffusers", "kohya"):
        fresh.load_lora_weights(tmp_path / f"o_{layout}.safetensors")
        assert np.abs(fresh("a orange 3 on a white background", **KW) - training).max() <= 1e-4
        fresh.unload_lora_weights()


def test_trained_embedding_saves_in_every_format(fresh, tmp_path):
    imgs, caps = _orange()
    before = fresh.text_encoder.text_model.embeddings.token_embedding.weight.clone()
    vec, losses = A.train_textual_inversion(fresh, imgs, [c.replace("orange", "<o>") for c in caps], "<o>",
                                            init_word="red", n_vectors=2, steps=3, batch_size=4, lr=5e-2, progress=False)
    assert vec.shape == (2, 32)
    table = fresh.text_encoder.text_model.embeddings.token_embedding.weight
    assert torch.equal(table[:49408], before)                                   # no other word moved
    assert not torch.equal(vec[0], before[fresh.tokenizer.encode("red")[1]])  # the new one did
    ref = fresh("a <o> 3 on a white background", **KW)
    for name, layout in (("o.pt", "a1111"), ("o.safetensors", "a1111"), ("o_d.safetensors", "diffusers"), ("o.bin", "diffusers")):
        A.save_embedding(vec, "<o>", tmp_path / name, layout)
        p = sd_from_scratch.load_default(); p.progress = False
        assert p.load_textual_inversion(tmp_path / name, token="<o>") == ["<o>", "<o>_1"]
        assert np.abs(p("a <o> 3 on a white background", **KW) - ref).max() == 0


def test_lora_tags_and_hashes(tmp_path, pipe):
    from safetensors.torch import save_file
    assert A.extract_lora_tags("a 7 <lora:orange:0.8> on blue <lora:style> <lora:x:-0.5:te=1>") == \
        ("a 7 on blue", [("orange", 0.8), ("style", 1.0), ("x", -0.5)])
    (tmp_path / "sub").mkdir()
    save_file(rand_lora(pipe), tmp_path / "sub" / "orange.safetensors")
    save_file(rand_lora(pipe), tmp_path / "copy.safetensors", metadata={"ss_note": "other header, same tensors"})
    assert A.find_lora("orange", tmp_path) == tmp_path / "sub" / "orange.safetensors"
    with pytest.raises(FileNotFoundError, match="copy, orange"):
        A.find_lora("missing", tmp_path)
    h = A.lora_hash(tmp_path / "sub" / "orange.safetensors")
    assert len(h) == 12 and h == A.lora_hash(tmp_path / "copy.safetensors")
    assert A.embedding_hash(tmp_path / "copy.safetensors") != A.embedding_hash(tmp_path / "sub" / "orange.safetensors")
