"""Training: kill -9 mid-run + resume ends bit-identical to an uninterrupted run; 2-process data parallel via accelerate."""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

TINY_UNET = {"_class_name": "UNet2DConditionModel", "sample_size": 8, "in_channels": 4, "out_channels": 4,
             "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
             "block_out_channels": [16, 32], "layers_per_block": 1, "cross_attention_dim": 32, "attention_head_dim": 8,
             "norm_num_groups": 8}

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    "A tiny pipeline folder with random frozen parts (the shipped model is not needed for these tests)."
    from sd_from_scratch.vae import AutoencoderKL
    from sd_from_scratch.text_encoder import CLIPTextModel
    from sd_from_scratch.tokenizer import CLIPTokenizer
    from sd_from_scratch.unet import UNet2DConditionModel
    from sd_from_scratch.toy import TOY_VAE_CONFIG, TOY_TEXT_CONFIG, TOY_SCHEDULER_CONFIG
    from sd_from_scratch.training import save_pipeline
    d = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    save_pipeline(d, UNet2DConditionModel.from_config(TINY_UNET), AutoencoderKL.from_config(TOY_VAE_CONFIG),
                  CLIPTextModel.from_config(TOY_TEXT_CONFIG), CLIPTokenizer(), TOY_SCHEDULER_CONFIG)
    return d

def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env

def _args(out, base, steps, *extra):
    return ["--out", str(out), "--base", str(base), "--data", "toy", "--limit", "96", "--max-steps", str(steps),
            "--save-every", "3", "--batch-size", "8", "--grad-accum", "2", "--warmup-steps", "4", "--lr", "1e-3",
            "--ema-decay", "0.99", "--threads", "1", "--no-progress", *extra]

def _train(out, base, steps, *extra):
    r = subprocess.run([PY, "-m", "sd_from_scratch.cli", "train", *_args(out, base, steps, *extra)], env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r

def _weights(folder):
    return load_file(Path(folder) / "unet" / "diffusion_pytorch_model.safetensors")

def _same(a, b):
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:3]}"

def test_kill_and_resume_is_bit_identical(base, tmp_path):
    steps = 24
    full, broken = tmp_path / "full", tmp_path / "broken"
    _train(full, base, steps)
    # the same run, killed with SIGKILL as soon as its second checkpoint is complete
    p = subprocess.Popen([PY, "-m", "sd_from_scratch.cli", "train", *_args(broken, base, steps)], env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (broken / "checkpoint-6").exists():
        assert p.poll() is None, f"training exited early: {p.stderr.read()[-2000:]}"
        assert time.time() - t0 < 240, "no checkpoint appeared"
        time.sleep(0.005)
    os.kill(p.pid, signal.SIGKILL); p.wait()
    assert not (broken / "model_index.json").exists(), "the run finished before it could be killed"
    done = sorted(x.name for x in broken.iterdir() if x.name.startswith("checkpoint-"))
    assert done and all((broken / d / "state.json").exists() for d in done), done
    r = _train(broken, base, steps, "--resume")
    assert "resumed from" in r.stderr
    _same(_weights(full), _weights(broken))                              # the shipped (EMA) weights
    _same(load_file(full / f"checkpoint-{steps}" / "unet.safetensors"),   # the raw weights
          load_file(broken / f"checkpoint-{steps}" / "unet.safetensors"))
    assert json.loads((full / "loss.json").read_text()) == json.loads((broken / "loss.json").read_text())
    # the result is a pipeline folder
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"): assert (broken / sub).is_dir()

def test_resume_refuses_a_different_run(base, tmp_path):
    _train(tmp_path, base, 3)
    r = subprocess.run([PY, "-m", "sd_from_scratch.cli", "train", *_args(tmp_path, base, 6, "--resume", "--seed", "1")],
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "differ" in r.stderr

def test_two_processes_with_accelerate(base, tmp_path):
    acc = Path(PY).parent / "accelerate"
    if not acc.exists(): pytest.skip("accelerate is not installed")
    if torch.cuda.device_count() > 0: pytest.skip("this test runs the 2 processes on the CPU")
    env = _env()
    # `--multi_gpu` selects accelerate's torchrun launcher (2 processes); with no GPU our Accelerator(cpu=True)
    # makes it a gloo process group on the CPU. (`--cpu` alone would start a single process.)
    r = subprocess.run([str(acc), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                        "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1", "-m", "sd_from_scratch.cli", "train",
                        *_args(tmp_path, base, 6)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    st = json.loads((tmp_path / "checkpoint-6" / "state.json").read_text())
    assert st["world_size"] == 2 and st["samples_seen"] == 6 * 2 * 8 * 2
    assert {p.name for p in (tmp_path / "checkpoint-6").glob("rng-*.pt")} == {"rng-0.pt", "rng-1.pt"}
    assert (tmp_path / "model_index.json").exists()
    w = _weights(tmp_path)
    assert all(torch.isfinite(v).all() for v in w.values())

def test_noise_offset_is_a_resume_option(base, tmp_path):
    "Checkpoints from before `noise_offset` existed resume with its default (0); changing it mid-run is refused."
    _train(tmp_path, base, 3)
    st = tmp_path / "checkpoint-3" / "state.json"
    s = json.loads(st.read_text()); del s["config"]["noise_offset"]; st.write_text(json.dumps(s))   # an older checkpoint
    r = subprocess.run([PY, "-m", "sd_from_scratch.cli", "train", *_args(tmp_path, base, 6, "--resume", "--noise-offset", "0.1")],
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "noise_offset" in r.stderr
    assert "resumed from" in _train(tmp_path, base, 6, "--resume").stderr


# ---------------------------------------------------------------------------------------------------------------
# In-process tests: a stand-in UNet that records what it receives, tiny frozen parts, a few dozen steps (seconds).
# ---------------------------------------------------------------------------------------------------------------
import copy, math, random
import numpy as np
import torch.nn as nn

class SpyUNet(nn.Module):
    """A stand-in UNet (a conv + a context projection) that records every (z_t, t, context) it is given.
    With `use_rng`, its output also depends on draws from every global generator (as dropout or a random
    augmentation would), so that a resumed run matches an uninterrupted one only if all of them are restored."""
    def __init__(self, ctx_dim=32, use_rng=False):
        super().__init__()
        self.conv, self.proj, self.use_rng, self.seen = nn.Conv2d(4, 4, 3, padding=1), nn.Linear(ctx_dim, 4), use_rng, []
    def forward(self, x, t, context):
        self.seen.append((x.detach().cpu(), t.detach().cpu(), context.detach().cpu()))
        out = self.conv(x) + self.proj(context.mean(1))[:, :, None, None]
        if self.use_rng:
            # random.gauss once per call: an odd number of calls leaves python's cached second gaussian in the state
            r = torch.rand(()).item() + np.random.rand() + np.random.normal() + random.random() + random.gauss(0, 1)
            if x.is_cuda: r += torch.rand((), device=x.device).item()
            out = out * (1 + 0.01 * r)
        return out

class Captioned:
    "n distinct 16×16 images (a colour ramp per index) with distinct captions."
    def __init__(self, n=24, size=16):
        g = torch.Generator().manual_seed(1)
        self.x = (torch.rand(n, 3, size, size, generator=g) * 2 - 1)
        self.captions = [f"a photo of thing number {i}" for i in range(n)]
    def __len__(self): return len(self.captions)
    def __getitem__(self, i): return self.x[i], self.captions[i]

@pytest.fixture(scope="module")
def parts():
    "Frozen parts with random weights: the toy VAE (scaling factor 0.5, so a missing or wrong factor shows), text encoder, tokenizer."
    from sd_from_scratch.vae import AutoencoderKL
    from sd_from_scratch.text_encoder import CLIPTextModel
    from sd_from_scratch.tokenizer import CLIPTokenizer
    from sd_from_scratch.toy import TOY_VAE_CONFIG, TOY_TEXT_CONFIG, TOY_SCHEDULER_CONFIG
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config({**TOY_VAE_CONFIG, "scaling_factor": 0.5}).eval().requires_grad_(False)
    te = CLIPTextModel.from_config(TOY_TEXT_CONFIG).eval().requires_grad_(False)
    return vae, te, CLIPTokenizer(), TOY_SCHEDULER_CONFIG

class FakeRank:
    "Process `rank` of `world` as the Trainer sees it (no process group: for the data-order arithmetic only)."
    def __init__(self, rank, world):
        self.process_index, self.num_processes, self.is_main_process, self.device = rank, world, rank == 0, torch.device("cpu")
    def prepare(self, m): return m
    def wait_for_everyone(self): pass
    def no_sync(self, m): return contextlib.nullcontext()
    def reduce(self, x, reduction="mean"): return x

import contextlib

def _trainer(parts, out, ds=None, unet=None, acc=None, **kw):
    from sd_from_scratch.training import TrainConfig, Trainer, _SingleProcess
    vae, te, tok, sched = parts
    cfg = dict(out=str(out), max_steps=8, batch_size=4, grad_accum=2, lr=1e-2, warmup_steps=2, ema_decay=0.9,
               save_every=0, keep_last=0, progress=False, seed=3)
    cfg.update(kw)
    return Trainer(TrainConfig(**cfg), ds or Captioned(), vae, te, tok, unet or SpyUNet(), sched, acc or _SingleProcess(cpu=True))

@torch.no_grad()
def _te(parts, captions):
    "The text encoder's contexts, computed here one caption at a time (independently of the Trainer's cache)."
    vae, te, tok, _ = parts
    return torch.cat([te(tok([c])["input_ids"]) for c in captions])

@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_caption_dropout_reaches_the_unet(parts, tmp_path, one_thread, p):
    """Count the empty-prompt contexts the UNet really receives over 40 micro-batches (320 captions): Binomial(320, p)
    within 4 σ; exactly none at p = 0 and all at p = 1. Every other context is its caption's, never another's."""
    ds = Captioned()
    tr = _trainer(parts, tmp_path, ds, cond_drop=p, max_steps=20).fit()
    ctx = torch.cat([c for _, _, c in tr.unet.seen])                      # (320, 77, 32)
    n = len(ctx); assert n == 20 * 2 * 4
    empty, caps = _te(parts, [""])[0], _te(parts, ds.captions)
    d_empty = (ctx - empty).flatten(1).abs().amax(1)
    d_caps = (ctx[:, None] - caps[None]).flatten(2).abs().amax(2).min(1).values
    assert ((d_empty < 1e-5) | (d_caps < 1e-5)).all(), "a context is neither the empty prompt's nor any caption's"
    k = int((d_empty < 1e-5).sum())
    sd = math.sqrt(n * p * (1 - p))
    assert abs(k - n * p) <= 4 * sd, f"{k} of {n} captions dropped at cond_drop={p} (expected {n * p:.0f} ± {4 * sd:.0f})"
    if p == 0: assert k == 0
    if p == 1: assert k == n

def test_micro_batch_pairs_each_latent_with_its_caption(parts, tmp_path, one_thread):
    "z₀ = (mean + std·ξ)·scaling_factor of the VAE's own encoding of that sample's image, next to that sample's caption."
    vae = parts[0]; ds = Captioned()
    tr = _trainer(parts, tmp_path, ds, cond_drop=0.3)
    caps = _te(parts, ds.captions); empty = _te(parts, [""])[0]
    xs, n_cap = [], 0
    for step in range(3):
        for m in range(2):
            z0, ctx, g, idx = tr.micro_batch(step, m)
            with torch.no_grad(): dist = vae.encode(ds.x[idx])
            xs.append((z0 / 0.5 - dist.mean) / dist.std)
            for row, i in zip(ctx, idx.tolist()):
                if (row - empty).abs().max() < 1e-5: continue
                assert (row - caps[i]).abs().max() < 1e-5, f"sample {i} got another sample's caption"
                n_cap += 1
    xi = torch.cat(xs)
    assert abs(xi.mean()) < 0.1 and abs(xi.std() - 1) < 0.1, (xi.mean(), xi.std())   # ξ ~ N(0, 1): sampled, scaled by 0.5
    assert n_cap > 0

def test_data_order_every_sample_once_per_epoch_over_processes_and_micro_batches(parts, tmp_path, one_thread):
    "2 processes × 2 micro-batches × 4 samples: each step covers 16 samples; steps 0-1 are epoch 0 of 32, steps 2-3 epoch 1."
    ds = Captioned(32)
    trs = [_trainer(parts, tmp_path, ds, acc=FakeRank(r, 2)) for r in range(2)]
    def epoch(steps): return [i for s in steps for m in range(2) for tr in trs for i in tr.micro_batch(s, m)[3].tolist()]
    e0, e1 = epoch([0, 1]), epoch([2, 3])
    assert sorted(e0) == list(range(32)) and sorted(e1) == list(range(32))
    assert e0 != e1, "every epoch visits the samples in the same order"
    a, b = (set(trs[r].micro_batch(0, 0)[3].tolist()) for r in range(2))
    assert not a & b, "two processes got the same samples"
    other = _trainer(parts, tmp_path, ds, seed=4)
    assert other.micro_batch(0, 0)[3].tolist() != trs[0].micro_batch(0, 0)[3].tolist() or \
           other.micro_batch(1, 0)[3].tolist() != trs[0].micro_batch(1, 0)[3].tolist(), "the seed does not change the data order"

@pytest.mark.filterwarnings("ignore:Seems like:UserWarning")
@pytest.mark.parametrize("clip", [None, 0.05])
def test_the_optimizer_steps_with_the_scheduled_lr_and_accumulated_clipped_gradients(parts, tmp_path, one_thread, clip):
    """At every optimizer step: lr = cfg.lr·lr_lambda(step) (warm-up, then cosine to 0); the gradient is the mean of
    the micro-batches' gradients (computed here from `micro_batch` and `diffusion_loss`), clipped to max_grad_norm.
    (Without clipping, so that a sum instead of a mean shows: clipping would rescale both to the same vector.)"""
    from sd_from_scratch.training import lr_lambda, diffusion_loss
    tr = _trainer(parts, tmp_path, max_steps=6, warmup_steps=3, lr_schedule="cosine", max_grad_norm=clip, grad_accum=3)
    assert tr.opt.param_groups[0]["weight_decay"] == tr.cfg.weight_decay and tr.ema.decay == tr.cfg.ema_decay
    seen, real_step = [], tr.opt.step
    def spy_step(*a, **k):
        step = tr.step
        ref = copy.deepcopy(tr.unet); ref.zero_grad(set_to_none=True)
        for m in range(3):
            z0, ctx, g, _ = tr.micro_batch(step, m)
            (diffusion_loss(ref, z0, ctx, tr.ac, g, "epsilon") / 3).backward()
        gref = torch.cat([p.grad.flatten() for p in ref.parameters()])
        if clip: gref = gref * min(1.0, clip / (gref.norm() + 1e-6))
        got = torch.cat([p.grad.flatten() for p in tr.unet.parameters()])
        seen.append((tr.opt.param_groups[0]["lr"], (got - gref).abs().max().item(), got.norm().item()))
        return real_step(*a, **k)
    tr.opt.step = spy_step
    tr.fit()
    assert len(seen) == 6
    for s, (lr, dg, norm) in enumerate(seen):
        assert lr == pytest.approx(1e-2 * lr_lambda(s, 3, 6, "cosine"), rel=1e-6), (s, lr)
        assert dg < 1e-6 and norm <= (clip or math.inf) * (1 + 1e-4), (s, dg, norm)
    if clip: assert max(n for _, _, n in seen) > 0.9 * clip, "the test's gradients were never large enough to be clipped"
    assert seen[0][0] == pytest.approx(1e-2 / 3) and seen[2][0] == pytest.approx(1e-2)
    assert lr_lambda(6, 3, 6, "cosine") == pytest.approx(0.0, abs=1e-12)

def test_ema_is_the_exact_moving_average():
    "θ̄ₖ = d·θ̄ₖ₋₁ + (1−d)·θ, with d = min(decay, (1+k)/(10+k)) (warm-up) or decay: checked against the closed form."
    from sd_from_scratch.training import EMA
    for warmup in (False, True):
        lin = nn.Linear(2, 1); nn.init.zeros_(lin.weight); nn.init.zeros_(lin.bias)
        ema = EMA(lin, decay=0.9, warmup=warmup)
        with torch.no_grad(): lin.weight.fill_(1.0)
        expect = 0.0
        for k in range(12):
            ema.update(lin)
            d = min(0.9, (1 + k) / (10 + k)) if warmup else 0.9
            expect = d * expect + (1 - d)
            assert ema.shadow["weight"][0, 0].item() == pytest.approx(expect, rel=1e-6), (warmup, k)
        assert ema.num_updates == 12

def test_the_shipped_unet_carries_the_ema_weights(parts, tmp_path, one_thread):
    "save_pipeline writes the EMA weights (not the raw ones) and the prediction type into the scheduler config."
    from sd_from_scratch.unet import UNet2DConditionModel
    torch.manual_seed(0)
    tr = _trainer(parts, tmp_path / "run", unet=UNet2DConditionModel.from_config(TINY_UNET), max_steps=3,
                  prediction_type="v_prediction").fit()
    tr.save_pipeline(tmp_path / "pipe")
    w = _weights(tmp_path / "pipe")
    ema = {k: v for k, v in tr.ema.shadow.items()}
    raw = dict(tr.unet.named_parameters())
    assert all(torch.equal(w[k], ema[k]) for k in ema)
    assert any(not torch.equal(w[k], raw[k].detach()) for k in ema)
    sc = json.loads((tmp_path / "pipe" / "scheduler" / "scheduler_config.json").read_text())
    assert sc["prediction_type"] == "v_prediction"

# --- resume: every piece of state, in one process, bit for bit --------------------------------------------------

def _state(tr):
    "Everything the future of a run depends on, as comparable python/tensor values."
    opt = tr.opt.state_dict()
    return {"unet": {k: v.clone() for k, v in tr.unet.state_dict().items()},
            "ema": {k: v.clone() for k, v in tr.ema.shadow.items()}, "ema_n": tr.ema.num_updates,
            "opt": [(k, n, v.clone()) for k, s in opt["state"].items() for n, v in s.items() if torch.is_tensor(v)],
            "lr": tr.lr_sched.get_last_lr(), "step": tr.step, "losses": list(tr.losses),
            "rng": (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())}

def _differences(a, b):
    bad = []
    for k in ("unet", "ema"):
        bad += [f"{k}.{n}" for n in a[k] if not torch.equal(a[k][n], b[k][n])]
    bad += [f"opt.{k}.{n}" for (k, n, x), (_, _, y) in zip(a["opt"], b["opt"]) if not torch.equal(x, y)]
    if len(a["opt"]) != len(b["opt"]): bad.append("opt (number of tensors)")
    for k in ("ema_n", "lr", "step", "losses"):
        if a[k] != b[k]: bad.append(k)
    ra, rb = a["rng"], b["rng"]
    if not torch.equal(ra[0], rb[0]): bad.append("torch rng")
    if not np.array_equal(ra[1], rb[1]): bad.append("numpy rng")
    if ra[2] != rb[2]: bad.append("python rng")
    return bad

RESUME_RUN = dict(max_steps=7, save_every=3, grad_accum=3, warmup_steps=10, lr_schedule="cosine", cond_drop=0.3, noise_offset=0.1)

def test_resume_restores_every_piece_of_state(parts, tmp_path, one_thread):
    """An uninterrupted 7-step run vs one "killed" right after checkpoint-3 and resumed by a new Trainer in a process
    whose generators are in another state: model, optimizer moments, EMA, LR (still warming up), step, losses and
    the final states of the torch, numpy and python generators (the model draws from all of them, and from CUDA's
    on a GPU) are equal bit for bit. 9 forward calls before the checkpoint leave python's cached gaussian set."""
    random.seed(11); np.random.seed(11); torch.manual_seed(11)
    full = _trainer(parts, tmp_path / "full", unet=SpyUNet(use_rng=True), **RESUME_RUN)
    torch.manual_seed(12)
    full.fit()
    want = _state(full)
    broken = tmp_path / "broken"; broken.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-3", broken / "checkpoint-3")
    random.seed(99); np.random.seed(99); torch.manual_seed(99); random.gauss(0, 1)   # another process, another state
    if torch.cuda.is_available(): torch.cuda.manual_seed_all(99)
    torch.manual_seed(5)
    tr = _trainer(parts, broken, unet=SpyUNet(use_rng=True), resume=True, **RESUME_RUN)
    assert tr.step == 0
    tr.fit()
    assert tr.step == 7 and len(tr.unet.seen) == (7 - 3) * 3
    bad = _differences(want, _state(tr))
    assert not bad, f"the resumed run differs from the uninterrupted one in: {bad[:8]}"
    for name in ("unet.safetensors", "ema.safetensors"):
        _same(load_file(tmp_path / "full" / "checkpoint-7" / name), load_file(broken / "checkpoint-7" / name))

# --- the command line: every option reaches the config --------------------------------------------------------

def test_every_cli_option_reaches_the_config(tmp_path):
    "Each `sdfs train` option, given a non-default value, arrives in the TrainConfig field of the same name."
    from sd_from_scratch.training import build_parser, config_from_args, TrainConfig
    p = build_parser(); d = TrainConfig()
    ucfg = tmp_path / "unet.json"; ucfg.write_text(json.dumps(TINY_UNET))
    argv, want = [], {}
    for a in p._actions:
        if not a.option_strings or a.dest == "help": continue
        flag = a.option_strings[0]
        if a.dest == "unet_config": argv += [flag, str(ucfg)]; want["unet_config"] = TINY_UNET; continue
        if a.nargs == 0: argv.append(flag); want[a.dest] = a.const; continue      # a switch: --resume → True, --no-progress → False
        if a.choices: v = [c for c in a.choices if c != a.default][0]
        elif a.type is int: v = (a.default or 0) + 7
        elif a.type is float: v = (a.default or 0.0) + 0.125
        else: v = f"value-of-{a.dest}"
        argv += [flag, str(v)]; want[a.dest] = v
    cfg = config_from_args(p.parse_args(argv))
    for k, v in want.items():
        assert getattr(cfg, k) == v, f"{k}: option gave {v!r}, config has {getattr(cfg, k)!r}"
        assert getattr(d, k) != v, k
    assert "overwrite" in want and "resume" in want and want.get("progress") is False

# --- the output folder (issue 25, items 2 and 6) -----------------------------------------------------------------

def _sdfs_train(*argv):
    "`sdfs train ARGV` in this process: (exit code, stderr)."
    import io
    from contextlib import redirect_stderr
    from sd_from_scratch.cli import main
    err = io.StringIO()
    with redirect_stderr(err): rc = main(["train", *map(str, argv)])
    return rc, err.getvalue()

def _unwritable(tmp_path):
    "A folder this process cannot write into (root ignores permission bits: then a read-only mount)."
    if os.geteuid() != 0:
        d = tmp_path / "ro"; d.mkdir(); d.chmod(0o555); return d
    for d in (Path("/sys"), Path("/proc/sys")):
        try: (d / "sdfs-probe").mkdir()
        except OSError: return d
        else: (d / "sdfs-probe").rmdir()
    pytest.skip("no unwritable folder here")

def test_out_is_checked_before_any_work(base, tmp_path, monkeypatch):
    "A file, a folder inside a file, an unwritable place: one line naming --out, no hidden temp name, nothing loaded."
    import sd_from_scratch.training as T
    monkeypatch.setattr(T, "load_frozen", lambda *a, **k: pytest.fail("loaded the models before checking --out"))
    f = tmp_path / "a.png"; f.write_bytes(b"not a folder")
    for out, words in ((f, "is a file"), (f / "run", "is a file"), (_unwritable(tmp_path) / "run", "cannot write")):
        rc, err = _sdfs_train("--out", out, "--base", base, "--max-steps", 2, "--no-progress")
        assert rc == 2 and words in err and f"--out {out}" in err, err
        assert ".tmp" not in err and ".sdfs" not in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert f.read_bytes() == b"not a folder"
    rc, err = _sdfs_train("--out", tmp_path / "x", "--base", base, "--resume", "--overwrite")
    assert rc == 2 and "not both" in err
    rc, err = _sdfs_train("--out", tmp_path / "x", "--base", base, "--cond-drop", 1.5)
    assert rc == 2 and "--cond-drop" in err and "[0, 1]" in err
    rc, err = _sdfs_train("--out", tmp_path / "x", "--base", base, "--data", tmp_path / "nope")
    assert rc == 2 and "--data" in err

def _tree(d):
    "Every file under d with its bytes' hash."
    import hashlib
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(d).rglob("*")) if p.is_file()}

def test_training_into_a_used_out_refuses_or_moves_the_old_run_aside(base, tmp_path, one_thread):
    "A second run into R needs --resume or --overwrite; --overwrite moves the old run, byte for byte, to R.old-…"
    from PIL import Image
    out, data = tmp_path / "R", tmp_path / "data"; data.mkdir()
    for i in range(4):
        Image.new("RGB", (16, 16), (60 * i, 20, 200 - 40 * i)).save(data / f"{i}.png"); (data / f"{i}.txt").write_text(f"colour {i}")
    common = ["--base", base, "--data", data, "--image-size", 16, "--batch-size", 2, "--save-every", 2, "--keep-last", 2,
              "--threads", 1, "--no-progress"]
    assert _sdfs_train("--out", out, "--max-steps", 6, *common)[0] == 0
    old = _tree(out)
    assert {"checkpoint-4", "checkpoint-6", "model_index.json"} <= {p.name for p in out.iterdir()}
    rc, err = _sdfs_train("--out", out, "--max-steps", 2, "--lr", 1e-3, *common)              # other options, no --resume
    assert rc == 2 and "already holds a training run" in err and "--resume" in err and "--overwrite" in err, err
    assert _tree(out) == old, "a refused run changed the old one"
    rc, err = _sdfs_train("--out", out, "--max-steps", 2, "--lr", 1e-3, "--overwrite", *common)
    assert rc == 0, err
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("R.old-")]
    assert len(aside) == 1 and _tree(aside[0]) == old, "the old run was not kept intact"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2"]
    assert json.loads((out / "checkpoint-2" / "state.json").read_text())["config"]["lr"] == 1e-3

def test_pruning_never_deletes_a_newer_checkpoint(tmp_path):
    "keep_last prunes only checkpoints older than the one just written (the issue's: a new checkpoint-2 deleted at once)."
    from sd_from_scratch.training import atomic_save, checkpoints
    for s in (4, 6): atomic_save(tmp_path, s, lambda p: None)
    atomic_save(tmp_path, 2, lambda p: (p / "new").write_text("x"), keep_last=2)
    assert [s for s, _ in checkpoints(tmp_path)] == [2, 4, 6] and (tmp_path / "checkpoint-2" / "new").exists()
    for s in (8, 10): atomic_save(tmp_path, s, lambda p: None, keep_last=2)
    assert [s for s, _ in checkpoints(tmp_path)] == [8, 10]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"

def test_check_out_cases(tmp_path):
    "A run killed while writing its first checkpoint resumes (from scratch); a bare pipeline folder is not a run to resume."
    from sd_from_scratch.training import check_out
    killed = tmp_path / "killed"; (killed / ".tmp-checkpoint-3").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="unfinished checkpoints"): check_out(killed)
    assert check_out(killed, resume=True) == [".tmp-checkpoint-3"]
    pipe = tmp_path / "pipe"; pipe.mkdir(); (pipe / "model_index.json").write_text("{}")
    with pytest.raises(FileExistsError, match="no checkpoint"): check_out(pipe, resume=True)
    other = tmp_path / "photos"; other.mkdir(); (other / "cat.png").write_bytes(b"")
    assert check_out(other) == [] and check_out(tmp_path / "new" / "deeper") == [] and (tmp_path / "new" / "deeper").is_dir()

def test_data_toy_is_resolved_by_the_cli_not_by_training(tmp_path):
    "training never imports the toy world (lesson 12): `--data toy` without a data set is one clear error pointing at `sdfs train`."
    from sd_from_scratch.training import train, TrainConfig
    with pytest.raises(ValueError, match="sdfs train --data toy"): train(TrainConfig(out=str(tmp_path / "o"), data="toy"))
    r = subprocess.run([PY, "-m", "sd_from_scratch.training", "--out", str(tmp_path / "o2"), "--data", "toy"], env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "sdfs train --data toy" in r.stderr and "Traceback" not in r.stderr, r.stderr
    import ast
    tree = ast.parse((ROOT / "sd_from_scratch" / "training.py").read_text())
    mods = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + \
           [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in mods if m.split(".")[-1] in ("toy", "cli")], mods
