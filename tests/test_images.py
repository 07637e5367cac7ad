"Round-trips and diffusers parity for `images`."
import numpy as np, pytest, torch
from PIL import Image
from diffusers.image_processor import VaeImageProcessor
from sd_from_scratch.images import (pil_to_tensor, tensor_to_pil, tensor_to_numpy, image_grid, sample_image,
                                    SAMPLE_IMAGES, check_size)

@pytest.mark.parametrize("name", SAMPLE_IMAGES)
def test_sample_images_offline(name):
    im = sample_image(name, 64)
    assert im.size == (64, 64) and im.mode == "RGB"

@pytest.mark.parametrize("size", [(64, 64), (203, 157), (97, 300)])
def test_preprocess_matches_diffusers(size):
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ref = VaeImageProcessor(vae_scale_factor=8).preprocess(im)
    ours = pil_to_tensor(im)
    assert ours.shape == ref.shape and (ours - ref).abs().max() <= 1e-6

def test_postprocess_matches_diffusers():
    y = torch.randn(3, 3, 16, 24, generator=torch.Generator().manual_seed(1)) * 1.5
    proc = VaeImageProcessor(vae_scale_factor=8)
    assert np.abs(proc.postprocess(y, output_type="np") - tensor_to_numpy(y)).max() <= 1e-7
    for a, b in zip(proc.postprocess(y, output_type="pil"), tensor_to_pil(y)):
        assert (np.asarray(a) == np.asarray(b)).all()

def test_errors_are_clear():
    with pytest.raises(ValueError, match="multiples of 8.*try 96×64"): check_size(100, 70)
    with pytest.raises(ValueError, match="unknown sample image"): sample_image("lena")
    with pytest.raises(TypeError, match="PIL image or a path"): pil_to_tensor(np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="do not fit"): image_grid([sample_image("rocket", 8)] * 5, rows=2, cols=2)

def test_grid_layout():
    ims = [Image.new("RGB", (4, 4), (i * 40, 0, 0)) for i in range(6)]
    g = image_grid(ims, rows=2)
    assert g.size == (12, 8)
    assert g.getpixel((4, 4)) == (160, 0, 0)     # row 1, col 1 → image 4
