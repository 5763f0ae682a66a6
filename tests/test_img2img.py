"""img2img and inpainting semantics (A1111's), on tiny random-weight models."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pydantic import ValidationError

from tiny_models import build_tiny_sd, write_safetensors
from webui.generation import masks as M
from webui.generation.engine import encode_images, latents_to_images, prepare_img2img
from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest
from webui.images.infotext import parse_infotext

BASE = dict(prompt="a green square", steps=3, sampler_name="Euler", cfg_scale=5, seed=21)


@pytest.fixture()
def model(easel):
    return easel.load_model("tiny-a.safetensors")


def picture(size=64) -> Image.Image:
    """A picture with structure everywhere, so any change shows."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(arr)


def left_half_mask(size=64) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, size // 2 - 1, size - 1), fill=255)
    return mask


def arr(im) -> np.ndarray:
    return np.asarray(im).astype(np.int16)


def img2img(easel, model, **kw):
    return easel.engine.img2img(model, Img2ImgRequest(**{**BASE, **kw}))


def test_denoising_0_returns_the_input_and_1_ignores_it(easel, model):
    init = picture()
    zero = img2img(easel, model, init_image=init, denoising_strength=0.0)
    assert np.array_equal(arr(zero.images[0]), arr(init))
    full_a = img2img(easel, model, init_image=init, denoising_strength=1.0)
    full_b = img2img(easel, model, init_image=Image.new("RGB", (64, 64), "white"), denoising_strength=1.0)
    assert np.array_equal(arr(full_a.images[0]), arr(full_b.images[0]))
    txt = easel.engine.txt2img(model, Txt2ImgRequest(**BASE, width=64, height=64))
    assert np.array_equal(arr(full_a.images[0]), arr(txt.images[0]))


def test_low_denoising_stays_closer_to_the_input(easel, model):
    """Measured against the VAE's round trip of the input: a random VAE cannot reproduce the input itself."""
    init = picture()
    round_trip = arr(latents_to_images(model, encode_images(model, [init]))[0])
    low = arr(img2img(easel, model, init_image=init, denoising_strength=0.2, steps=10).images[0])
    high = arr(img2img(easel, model, init_image=init, denoising_strength=0.9, steps=10).images[0])
    assert np.abs(low - round_trip).mean() < np.abs(high - round_trip).mean()


@pytest.mark.parametrize("fill", [0, 1, 2, 3])
def test_pixels_outside_the_mask_are_exactly_the_input(easel, model, fill):
    init = picture()
    out = arr(img2img(easel, model, init_image=init, mask=left_half_mask(), mask_blur=0, inpainting_fill=fill,
                      denoising_strength=0.8).images[0])
    assert np.array_equal(out[:, 32:], arr(init)[:, 32:])
    assert np.abs(out[:, :32] - arr(init)[:, :32]).mean() > 3


def test_with_blur_only_the_band_near_the_edge_changes(easel, model):
    init = picture()
    out = arr(img2img(easel, model, init_image=init, mask=left_half_mask(), mask_blur=4).images[0])
    # the overlay mask is the blurred mask doubled: beyond ~3 blur radii of the edge it is 0
    assert np.array_equal(out[:, 32 + 12:], arr(init)[:, 32 + 12:])
    assert np.abs(out[:, :20] - arr(init)[:, :20]).mean() > 3


def test_inpaint_not_masked_inverts(easel, model):
    init = picture()
    out = arr(img2img(easel, model, init_image=init, mask=left_half_mask(), mask_blur=0,
                      inpainting_mask_invert=1).images[0])
    assert np.array_equal(out[:, :32], arr(init)[:, :32])
    assert np.abs(out[:, 32:] - arr(init)[:, 32:]).mean() > 3


def test_only_masked_pastes_back_in_place(easel, model):
    """A marker in a 128x128 picture; "Only masked" regenerates a 64x64 crop around it and puts it back."""
    init = Image.new("RGB", (128, 128), (40, 40, 40))
    draw = ImageDraw.Draw(init)
    draw.rectangle((80, 16, 95, 31), fill=(255, 255, 0))  # marker, top right
    mask = Image.new("L", (128, 128), 0)
    ImageDraw.Draw(mask).rectangle((80, 16, 95, 31), fill=255)
    req = Img2ImgRequest(**BASE, init_image=init, mask=mask, mask_blur=0, inpaint_full_res=True,
                         inpaint_full_res_padding=8, width=64, height=64, denoising_strength=1.0)
    prep = prepare_img2img(req.model_copy(update={"width": 64, "height": 64}))
    assert prep.paste_box == (72, 8, 104, 40)  # marker bbox + 8 px, already square
    out = easel.engine.img2img(model, req).images[0]
    assert out.size == (128, 128)  # the result is the whole picture again
    a, b = arr(out), arr(init)
    changed = np.argwhere(np.abs(a - b).sum(axis=2) > 0)
    assert changed.size and changed[:, 0].min() >= 16 and changed[:, 0].max() <= 31
    assert changed[:, 1].min() >= 80 and changed[:, 1].max() <= 95
    assert np.abs(a[16:32, 80:96] - b[16:32, 80:96]).mean() > 10  # the marker itself was redrawn


def test_masked_content_modes_differ_as_specified(easel, model):
    init = Image.new("RGB", (64, 64), (250, 20, 20))
    ImageDraw.Draw(init).rectangle((32, 0, 63, 63), fill=(20, 20, 250))
    mask = left_half_mask()
    common = dict(init_image=init, mask=mask, mask_blur=0, denoising_strength=0.5)
    original = arr(img2img(easel, model, inpainting_fill=1, **common).images[0])
    nothing = arr(img2img(easel, model, inpainting_fill=3, **common).images[0])
    noise = arr(img2img(easel, model, inpainting_fill=2, **common).images[0])
    assert np.abs(original[:, :32] - nothing[:, :32]).mean() > 3
    assert np.abs(original[:, :32] - noise[:, :32]).mean() > 3
    # "fill" replaces the masked colours with the surroundings' before sampling
    filled = np.asarray(M.fill_masked(init, mask)).astype(np.int16)
    assert filled[:, :32, 0].mean() < 60 and filled[:, :32, 2].mean() > 200  # red gone, blue spread in
    assert np.array_equal(filled[:, 32:], arr(init)[:, 32:])


def test_infotext_records_the_inpaint_settings(easel, model):
    r = img2img(easel, model, init_image=picture(), mask=left_half_mask(), mask_blur=6, inpainting_fill=3,
                inpaint_full_res=True, inpaint_full_res_padding=16, inpainting_mask_invert=1, denoising_strength=0.6)
    info = parse_infotext(r.infotexts[0])
    assert info["Denoising strength"] == "0.6" and info["Mask blur"] == "6"
    assert info["Mask mode"] == "Inpaint not masked" and info["Masked content"] == "latent nothing"
    assert info["Inpaint area"] == "Only masked" and info["Masked area padding"] == "16"


def test_resize_modes_and_scale(easel, model):
    wide = picture(64).resize((128, 64))
    for mode in range(4):
        r = img2img(easel, model, init_image=wide, width=64, height=64, resize_mode=mode, denoising_strength=0.5)
        assert r.images[0].size == (64, 64)
    big = picture(64).resize((256, 128))
    assert img2img(easel, model, init_image=big, scale_by=0.5, denoising_strength=0.3).images[0].size == (128, 64)
    cropped = M.resize_image(1, wide, 64, 64)
    assert np.array_equal(np.asarray(cropped), np.asarray(wide.resize((128, 64), M.LANCZOS).crop((32, 0, 96, 64))))
    filled = np.asarray(M.resize_image(2, wide, 64, 64))
    assert filled.shape == (64, 64, 3) and filled[:16].std() > 0  # borders filled, not black


def test_odd_images_give_sensible_results(easel, model):
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    assert img2img(easel, model, init_image=rgba, denoising_strength=0.0).images[0].getpixel((0, 0)) == (255, 255, 255)
    palette = picture().convert("P")
    assert img2img(easel, model, init_image=palette, denoising_strength=0.3).images[0].mode == "RGB"
    tiny = Image.new("RGB", (1, 1), (0, 128, 0))
    assert img2img(easel, model, init_image=tiny, denoising_strength=0.3).images[0].size == (64, 64)
    big = Image.new("RGB", (8192, 8192), (0, 0, 128))  # the largest picture Easel takes (64 megapixels)
    assert img2img(easel, model, init_image=big, width=64, height=64, denoising_strength=0.0).images[0].size == (64, 64)
    with pytest.raises(ValidationError) as err:
        Img2ImgRequest(init_image=Image.new("RGB", (8193, 8192)))
    assert "init_image" in str(err.value) and "megapixels" in str(err.value)


def test_mask_of_another_size_is_resized_and_an_empty_mask_is_refused(easel, model):
    init = picture()
    big_mask = left_half_mask(128)
    out = arr(img2img(easel, model, init_image=init, mask=big_mask, mask_blur=0).images[0])
    assert np.array_equal(out[:, 36:], arr(init)[:, 36:])  # Lanczos resizing reaches 3 px past the edge
    with pytest.raises(ValueError, match="mask: the mask is empty"):
        img2img(easel, model, init_image=init, mask=Image.new("L", (64, 64), 0))


def test_a_painted_rgba_layer_is_a_mask():
    layer = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(layer).ellipse((10, 10, 30, 30), fill=(255, 255, 255, 255))
    mask = M.prepare_mask(layer, (64, 64), 0, False)
    assert mask.getpixel((20, 20)) == 255 and mask.getpixel((50, 50)) == 0


@pytest.fixture(scope="module")
def inpainting_checkpoint(tmp_path_factory):
    """In a folder of its own, so the shared tiny-model folder stays as other tests expect it."""
    path = tmp_path_factory.mktemp("inpainting") / "tiny-inpainting.safetensors"
    write_safetensors(build_tiny_sd(seed=3, in_channels=9), path, metadata={"modelspec.resolution": "64x64"})
    return path


def test_a_9_channel_inpainting_checkpoint_loads_and_runs(easel, inpainting_checkpoint):
    easel.manager.catalog.roots.append(inpainting_checkpoint.parent)
    easel.manager.refresh()
    model = easel.load_model("tiny-inpainting.safetensors")
    assert model.family.inpainting and model.unet.config.in_channels == 9
    init = picture()
    out = arr(easel.engine.img2img(model, Img2ImgRequest(**BASE, init_image=init, mask=left_half_mask(),
                                                         mask_blur=0)).images[0])
    assert np.array_equal(out[:, 32:], arr(init)[:, 32:])
    assert np.abs(out[:, :32] - arr(init)[:, :32]).mean() > 3
    txt = easel.engine.txt2img(model, Txt2ImgRequest(**BASE, width=64, height=64))
    assert txt.images[0].size == (64, 64)
