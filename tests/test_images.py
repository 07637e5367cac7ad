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


def test_16bit_and_other_modes(tmp_path):
    "A 16-bit PNG (mode I;16) keeps its grey level instead of turning white; palette, LA, RGBA, F become RGB."
    a16 = np.full((16, 24), 32768, dtype=np.uint16)                     # mid-grey in 16 bits
    Image.fromarray(a16).save(tmp_path / "g16.png")
    x = pil_to_tensor(tmp_path / "g16.png")
    assert x.shape == (1, 3, 16, 24) and abs(x.mean().item() - 0.0) < 0.01, x.mean()
    grey = Image.new("L", (16, 16), 64)
    ref = pil_to_tensor(grey)
    for im in (grey.convert("P"), grey.convert("LA"), grey.convert("RGBA"), Image.fromarray(np.full((16, 16), 64 / 255, np.float32))):
        torch.testing.assert_close(pil_to_tensor(im), ref, atol=1 / 255, rtol=0, msg=im.mode)


def test_shipped_files_are_found():
    from sd_from_scratch.images import shipped
    assert (shipped("tiny-sd") / "model_index.json").exists()
    assert shipped("digit_classifier.safetensors").is_file()
    with pytest.raises(FileNotFoundError, match="nope"): shipped("nope")


def test_argument_checks_name_the_argument():
    from sd_from_scratch.images import check_int, check_float, check_size
    assert check_int("steps", np.int64(4)) == 4 and type(check_int("steps", np.int64(4))) is int
    for bad, err in ((32.0, TypeError), (True, TypeError), ("3", TypeError), (None, TypeError)):
        with pytest.raises(err, match="height"): check_int("height", bad)
    with pytest.raises(ValueError, match="steps must be an integer ≥ 1, got 0"): check_int("steps", 0, 1)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eta must be a finite number"): check_float("eta", bad)
    with pytest.raises(ValueError, match="got 0×64"): check_size(0, 64)
