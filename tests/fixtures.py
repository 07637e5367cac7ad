"""Reusable test fixtures: a tiny Stable Diffusion pipeline with random weights, written by diffusers itself.

`make_tiny_sd(dir)` builds diffusers/transformers components from tiny configs (seeded), wraps them in a
`StableDiffusionPipeline` (or `StableDiffusionInpaintPipeline` when `inpaint=True`: a 9-channel UNet) and
`save_pretrained`s it to `dir`. The tokenizer folder holds the real CLIP vocabulary (vocab.json + merges.txt built
from the BPE file that ships with sd_from_scratch), so prompts tokenize exactly as in SD v1.

Only tests and notebooks import this (it imports diffusers and transformers)."""
from __future__ import annotations
import gzip, json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# SD v1.5's scheduler/scheduler_config.json
SD15_SCHEDULER = {"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
                  "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
                  "trained_betas": None}

TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64)
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=3, vocab_size=49408,
                 max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                 hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=32)


def bytes_to_unicode() -> dict[int, str]:
    "GPT-2/CLIP's reversible byte → printable-unicode table."
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs: bs.append(b); cs.append(256 + n); n += 1
    return dict(zip(bs, map(chr, cs)))


def write_clip_tokenizer(out) -> Path:
    "Write the CLIP tokenizer in the hub layout (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json)."
    out = Path(out); out.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(ROOT / "sd_from_scratch" / "bpe_simple_vocab_16e6.txt.gz", "rt", encoding="utf-8").read().split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "errors": "replace"}))
    (out / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    return out


def make_tiny_components(seed: int = 0, inpaint: bool = False, tok_dir=None):
    "The diffusers/transformers components of a tiny SD (seeded random weights)."
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel, PNDMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**{**TINY_UNET, "in_channels": 9 if inpaint else 4})
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**TINY_VAE)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_CLIP))
    if tok_dir is None:
        import tempfile
        tok_dir = tempfile.mkdtemp(prefix="sdfs_tok_")
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tok_dir))
    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER)
    return dict(unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, scheduler=scheduler)


def make_tiny_sd(out, seed: int = 0, inpaint: bool = False, variant: str | None = None, safe_serialization: bool = True,
                 hub_tokenizer: bool = True):
    """Build a tiny random SD pipeline with diffusers and `save_pretrained` it to `out`; returns the diffusers pipeline.
    transformers 5 writes the tokenizer as tokenizer.json only; `hub_tokenizer=True` adds vocab.json + merges.txt
    (the layout of the SD v1.5 repo on the hub)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionInpaintPipeline
    out = Path(out)
    comps = make_tiny_components(seed, inpaint, tok_dir=out / "_tok_src")
    cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    pipe = cls(**comps, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(out, variant=variant, safe_serialization=safe_serialization)
    import shutil
    if hub_tokenizer:
        for f in ("vocab.json", "merges.txt"): shutil.copy(out / "_tok_src" / f, out / "tokenizer" / f)
    shutil.rmtree(out / "_tok_src", ignore_errors=True)
    return pipe
