"""Reference answers for every exercise notebook in nbs/exercises/ (teachers only: not part of the package or its wheel).

Each `solution_*` is a short correct answer to the blank of the same name (without the prefix) in a learner
notebook. The graders (`sd_from_scratch.exercises.*.check_*`) never read this file: they compare against the
lessons' own code. `tests/test_exercises.py` runs every grader on these answers, and checks that no learner
notebook contains them."""
from __future__ import annotations
import numpy as np
import torch
import torch.nn.functional as F

# ---- ex_01: images and schedule
def solution_to_model_range(pixels: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(pixels)).float() / 255 * 2 - 1          # H×W×3 in [-1, 1]
    return x.permute(2, 0, 1)[None]                                                     # 1×3×H×W

def solution_scaled_linear_betas(n_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n_steps, dtype=torch.float32) ** 2

def solution_alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    return torch.cumprod(1 - betas, dim=0)

def solution_add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    ab = alphas_cumprod[t].reshape(-1, *([1] * (x0.ndim - 1)))          # B×1×1×1
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

# ---- ex_02: VAE
def solution_encode_latents(vae, images: torch.Tensor) -> torch.Tensor:
    return vae.encode(images).mean * vae.scaling_factor

def solution_decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    return vae.decode(latents / vae.scaling_factor)

def solution_measure_latent_std() -> dict:
    from sd_from_scratch.exercises.vae import tiny_vae, latent_photos
    vae = tiny_vae()
    with torch.no_grad(): m = vae.encode(latent_photos()).mean
    return {"raw_std": m.std().item(), "scaled_std": (m * vae.scaling_factor).std().item()}

# ---- ex_03: tokenizer and text encoder
def solution_pad_and_truncate(ids: list[int], max_length: int = 77, bos: int = 49406, eos: int = 49407,
                              pad: int = 49407) -> list[int]:
    ids = [bos, *ids[:max_length - 2], eos]
    return ids + [pad] * (max_length - len(ids))

def solution_pool_eot(last_hidden_state: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    pos = input_ids.argmax(-1)                                           # first <|endoftext|> (the largest id)
    return last_hidden_state[torch.arange(len(input_ids)), pos]

def solution_causal_mask(L: int) -> torch.Tensor:
    return torch.ones(L, L, dtype=torch.bool).tril()

# ---- ex_05: attention and the timestep embedding
def solution_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5                # …×N×M
    return scores.softmax(dim=-1) @ v

def solution_timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-np.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)

# ---- ex_06: the UNet
def solution_resblock(blk, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    h = blk.conv1(F.silu(blk.norm1(x)))                                  # B×out×H×W
    h = h + blk.time_emb_proj(F.silu(temb))[:, :, None, None]            # one shift per channel
    h = blk.conv2(blk.dropout(F.silu(blk.norm2(h))))
    skip = x if blk.conv_shortcut is None else blk.conv_shortcut(x)
    return skip + h

def solution_cross_attention(attn, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    B, N, _ = x.shape
    heads = attn.heads
    def split(u): return u.view(B, u.shape[1], heads, -1).transpose(1, 2)       # B×heads×tokens×d
    q, k, v = split(attn.to_q(x)), split(attn.to_k(context)), split(attn.to_v(context))
    w = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)              # B×heads×N×M
    o = (w @ v).transpose(1, 2).reshape(B, N, -1)                               # B×N×(heads·d)
    return attn.to_out[0](o)

def solution_unet_forward(unet, x: torch.Tensor, t, context: torch.Tensor) -> torch.Tensor:
    temb = unet.time_embed(t, x.shape[0], x.device, x.dtype)
    h = unet.conv_in(x)
    skips = [h]
    for blk in unet.down_blocks:
        for i, resnet in enumerate(blk.resnets):
            h = resnet(h, temb)
            if blk.has_attn: h = blk.attentions[i](h, context)
            skips.append(h)
        if blk.downsamplers is not None:
            h = blk.downsamplers[0](h)
            skips.append(h)
    h = unet.mid_block(h, temb, context)
    for blk in unet.up_blocks:
        for i, resnet in enumerate(blk.resnets):
            h = resnet(torch.cat([h, skips.pop()], dim=1), temb)
            if blk.has_attn: h = blk.attentions[i](h, context)
        if blk.upsamplers is not None: h = blk.upsamplers[0](h)
    return unet.conv_out(F.silu(unet.conv_norm_out(h)))

# ---- ex_07: samplers
def solution_ddim_step(x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    a_t, a_prev = alphas_cumprod[t], alphas_cumprod[t_prev]
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps

def solution_euler_step(x: torch.Tensor, eps: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    x0 = x - sigma * eps
    d = (x - x0) / sigma
    return x + d * (sigma_next - sigma)

# ---- ex_08: guidance
def solution_cfg(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, w: float) -> torch.Tensor:
    return w * eps_cond + (1 - w) * eps_uncond

def solution_dynamic_threshold(x0: torch.Tensor, ratio: float = 0.995, max_value: float = 1.0) -> torch.Tensor:
    flat = x0.reshape(len(x0), -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value)[:, None]
    return (flat.clamp(-s, s) / s).reshape(x0.shape)

def solution_measure_plms_w11() -> dict:
    from sd_from_scratch.exercises.measure import toy_pipe, toy_accuracy, measure_prompts
    pipe, prompts = toy_pipe(), measure_prompts(16)
    return {s: toy_accuracy(pipe(prompts, steps=20, seed=0, guidance_scale=11.0, sampler=s, output_type="pt"))["ink"]
            for s in ("ddim", "pndm")}

# ---- ex_10: the pipeline, end to end
@torch.no_grad()
def solution_generate(pipe, prompts: list[str], seed: int, steps: int = 20, w: float = 7.5) -> torch.Tensor:
    from sd_from_scratch.samplers import sampling_plan
    def embed(texts): return pipe.text_encoder(pipe.tokenizer(texts)["input_ids"])     # B×77×D
    context = torch.cat([embed([""] * len(prompts)), embed(prompts)])               # [uncond; cond]
    h, w_px = pipe.default_hw
    f = pipe.vae_scale_factor
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(prompts), pipe.latent_channels, h // f, w_px // f, generator=g)
    plan = sampling_plan("ddim", steps, pipe.scheduler_config)
    ac, final = plan.alphas_cumprod, plan.alphas_cumprod[0]        # set_alpha_to_one=False: the last step lands on ᾱ[0]
    for t in plan.timesteps:
        eu, ec = pipe.unet(torch.cat([x, x]), t, context).chunk(2)
        eps = eu + w * (ec - eu)
        prev = int(t) - 1000 // steps
        a_t, a_prev = ac[t], (ac[prev] if prev >= 0 else final)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return (pipe.vae.decode(x / pipe.scaling_factor) / 2 + 0.5).clamp(0, 1)

def solution_measure_half_size() -> dict:
    from sd_from_scratch.exercises.measure import toy_pipe, toy_accuracy, measure_prompts
    pipe, prompts = toy_pipe(), measure_prompts(16)
    native = toy_accuracy(pipe(prompts, steps=20, seed=0, output_type="pt"))
    half = toy_accuracy(pipe(prompts, height=16, width=16, steps=20, seed=0, output_type="pt"))
    return {"native_digit": native["digit"], "half_digit": half["digit"], "half_background": half["background"]}

# ---- ex_11: training
def solution_noise_loss(model, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    ab = alphas_cumprod[t].reshape(-1, *([1] * (x0.ndim - 1)))
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    return F.mse_loss(model(x_t, t), noise)

def solution_drop_captions(captions: list[str], u: torch.Tensor, p: float = 0.1) -> list[str]:
    return ["" if float(ui) < p else c for c, ui in zip(captions, u)]

def solution_measure_mean_leak() -> dict:
    from sd_from_scratch.exercises.training import toy_latents
    from sd_from_scratch.schedule import make_betas, alphas_cumprod, add_noise
    z0 = F.interpolate(toy_latents(), size=(64, 64), mode="nearest")               # SD's 64×64 latent size
    ac, out = alphas_cumprod(make_betas("scaled_linear", 1000)), {}
    for key, offset in (("offset_0", 0.0), ("offset_0.1", 0.1)):
        eps = torch.randn(z0.shape) + offset * torch.randn(*z0.shape[:2], 1, 1)
        xt = add_noise(z0, eps, torch.full((len(z0),), 999), ac)
        out[key] = torch.corrcoef(torch.stack([z0.mean((2, 3)).flatten(), xt.mean((2, 3)).flatten()]))[0, 1].item()
    return out

# ---- ex_12: caption dropout, trained
def solution_train(p_drop: float, steps: int = 1500, seed: int = 0):
    from sd_from_scratch.exercises.toy import ColourModel, colour_batch, COLOUR_AC, EMPTY
    from sd_from_scratch.training import diffusion_loss
    model = ColourModel(seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x0, ids = colour_batch(256, g)
        ids = torch.where(torch.rand(len(ids), generator=g) < p_drop, EMPTY, ids)     # caption dropout
        loss = diffusion_loss(model, x0, ids, COLOUR_AC, g)
        opt.zero_grad(); loss.backward(); opt.step()
    return model

def solution_what_breaks(steps: int = 1500) -> dict:
    from sd_from_scratch.exercises.toy import guidance_gain, empty_prompt_loss
    with_drop, without = solution_train(0.1, steps).eval(), solution_train(0.0, steps).eval()
    return {"gain_with_dropout": guidance_gain(with_drop)["gain"], "gain_without_dropout": guidance_gain(without)["gain"],
            "empty_ratio_with_dropout": empty_prompt_loss(with_drop)["ratio"],
            "empty_ratio_without_dropout": empty_prompt_loss(without)["ratio"]}

# ---- ex_13: evaluation
def solution_feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(0), np.cov(features, rowvar=False)

def solution_frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    from scipy import linalg
    covmean = linalg.sqrtm(sigma1 @ sigma2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))

# ---- ex_14: data
def solution_funnel(rows: list[dict]) -> list[int]:
    keep = [lambda r: r["similarity"] >= 0.28, lambda r: min(r["width"], r["height"]) >= 512,
            lambda r: r["pwatermark"] < 0.5, lambda r: r["aesthetic"] > 5.0]
    counts = [len(rows)]
    for f in keep:
        rows = [r for r in rows if f(r)]
        counts.append(len(rows))
    return counts

def solution_assign_buckets(sizes, buckets) -> list[int]:
    log_r = np.log([w / h for w, h in sizes])
    log_b = np.log([w / h for w, h in buckets])
    return np.abs(log_r[:, None] - log_b[None]).argmin(1).tolist()

# ---- ex_16: the command line's PNG chunk
def solution_regenerate(png_path, pipe):
    from PIL import Image
    samplers = {"DDPM": "ddpm", "DDIM": "ddim", "PLMS": "pndm", "LMS": "lms", "Euler": "euler", "Euler a": "euler_a",
                "Heun": "heun", "DPM++ 2M": "dpmpp_2m", "DPM++ 2M Karras": "dpmpp_2m_karras"}
    *head, settings = Image.open(png_path).info["parameters"].strip().split("\n")
    neg_at = next((i for i, l in enumerate(head) if l.startswith("Negative prompt:")), len(head))
    prompt = "\n".join(head[:neg_at])
    negative = "\n".join(head[neg_at:])[len("Negative prompt:"):].strip() or None
    kv = dict(item.split(": ", 1) for item in settings.split(", "))
    w, h = (int(s) for s in kv["Size"].split("x"))
    return pipe(prompt, negative_prompt=negative, steps=int(kv["Steps"]), sampler=samplers[kv["Sampler"]],
                guidance_scale=float(kv["CFG scale"]), seed=int(kv["Seed"]), height=h, width=w)[0]
