"""The main job until the tiny trained model ships: noise an offline photo with SD's schedule and save the grid."""
from pathlib import Path
import torch
from sd_from_scratch.images import sample_image, pil_to_tensor, image_grid
from sd_from_scratch.schedule import make_betas, alphas_cumprod, add_noise

out = Path("outputs"); out.mkdir(exist_ok=True)
x0 = pil_to_tensor(sample_image("astronaut", 128))                 # 1×3×128×128 in [-1,1]
ts = torch.tensor([0, 100, 250, 500, 750, 999])
noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).expand(len(ts), -1, -1, -1)
xt = add_noise(x0.expand(len(ts), -1, -1, -1), noise, ts, alphas_cumprod(make_betas("scaled_linear")))
path = out / "forward_process.png"
image_grid(xt.clamp(-1, 1), rows=1).save(path)
print(f"wrote {path}: the astronaut at t = {ts.tolist()} of SD's scaled-linear schedule")
