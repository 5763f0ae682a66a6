"""The ControlNet accordion in Chromium: a unit with an uploaded picture, its preview, and a generation that
uses it (the infotext says so, and the image differs from the same seed without it)."""
from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

from browser import data_dir_with_tiny_model, easel_page, easel_server, requires_chromium, set_number
from tiny_models import tiny_controlnet, write_controlnet

pytestmark = [pytest.mark.browser, requires_chromium]


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_root, tiny_a):
    data = data_dir_with_tiny_model(tmp_path_factory.mktemp("controlnet-ui-data"), model_root)
    write_controlnet(tiny_controlnet(tiny_a.unet, 1), data / "models" / "ControlNet" / "control_tiny_canny.safetensors")
    with easel_server(data) as url:
        yield url, data


def generate(page, wanted: str) -> str:
    page.click("#txt2img_generate")
    page.wait_for_function(f"document.querySelector('#txt2img_info textarea').value.includes({wanted!r})",
                           timeout=120_000)
    return page.input_value("#txt2img_info textarea")


def newest(data) -> Image.Image:
    pngs = sorted((data / "outputs" / "txt2img-images").rglob("*.png"), key=lambda p: p.stat().st_mtime)
    return Image.open(pngs[-1]).convert("RGB")


def test_a_unit_with_an_uploaded_picture_controls_the_generation(server, tmp_path):
    url, data = server
    picture = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(picture).rectangle((16, 16, 48, 48), fill="white")
    picture.save(tmp_path / "square.png")
    with easel_page(url) as page:
        page.fill("#txt2img_prompt textarea", "a red circle")
        set_number(page, "txt2img_steps", 2)
        page.fill("#txt2img_seed input", "5")
        plain_info = generate(page, "Seed: 5,")
        assert "ControlNet" not in plain_info
        plain = newest(data)

        page.click("#txt2img_controlnet .label-wrap, #txt2img_controlnet button")
        page.set_input_files("#txt2img_controlnet_0_image input[type=file]", str(tmp_path / "square.png"))
        page.locator("#txt2img_controlnet_0_enabled input[type=checkbox]").check()
        page.locator("#txt2img_controlnet_0_module input").click()
        page.get_by_role("option", name="canny", exact=True).click()
        page.wait_for_selector("#txt2img_controlnet_0_threshold_a", state="visible")
        assert "Low Threshold" in page.inner_text("#txt2img_controlnet_0_threshold_a")
        page.locator("#txt2img_controlnet_0_model input").click()
        page.get_by_role("option", name="control_tiny_canny", exact=False).click()
        page.click("#txt2img_controlnet_0_run_preview")
        page.wait_for_selector("#txt2img_controlnet_0_preview img", timeout=60_000)

        info = generate(page, "ControlNet 0")
        assert 'ControlNet 0: "Module: canny, Model: control_tiny_canny [' in info
        assert "Threshold A: 100, Threshold B: 200" in info
        controlled = newest(data)
        assert controlled.size == plain.size and controlled.tobytes() != plain.tobytes()
