"""The Extras tab (with a model upscaler) and the Checkpoint Merger tab in a real browser (Debian Chromium via
Playwright); "Send to extras" from txt2img."""
from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest
from PIL import Image

from browser import chromium_page, data_dir_with_tiny_model, easel_server, requires_chromium, set_number
from upscaler_models import write_upscaler

pytestmark = [pytest.mark.browser, requires_chromium]
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_root):
    data = data_dir_with_tiny_model(tmp_path_factory.mktemp("extras-data"), model_root)
    write_upscaler("compact", data / "models" / "ESRGAN" / "2x-compact.safetensors", 2)
    import shutil
    shutil.copy(model_root / "models" / "Stable-diffusion" / "tiny-b.safetensors",
                data / "models" / "Stable-diffusion" / "tiny-b.safetensors")
    with easel_server(data, script=HERE / "serve_with_spandrel.py") as url:
        yield url, data


def test_send_a_result_to_extras_and_upscale_it_with_a_model(server):
    url, data = server
    with chromium_page() as page:
        page.goto(url + "/")
        page.wait_for_selector("#txt2img_prompt textarea")
        page.fill("#txt2img_prompt textarea", "a red circle")
        set_number(page, "txt2img_steps", 2)
        page.click("#txt2img_generate")
        page.wait_for_selector("#txt2img_gallery img", timeout=120_000)
        page.click("#txt2img_send_to_extras")
        page.wait_for_selector("#extras_image img", timeout=30_000)
        page.locator("#extras_upscaler_1 input").click()
        page.get_by_role("option", name="2x-compact").click()
        page.click("#extras_generate")
        page.wait_for_function("document.querySelector('#extras_progress')?.innerText.includes('picture(s) in')",
                               timeout=120_000)
        assert "Postprocess upscaler: 2x-compact" in page.inner_text("#extras_info")
    folder = data / "outputs" / "extras-images" / datetime.date.today().isoformat()
    [saved] = folder.glob("*.png")
    image = Image.open(saved)
    assert image.size == (128, 128)  # the 64×64 result, scaled by 2
    assert "Prompt" not in image.info["parameters"] and image.info["parameters"].startswith("a red circle")


def test_merge_two_checkpoints_and_the_new_one_is_listed(server):
    url, data = server
    with chromium_page() as page:
        page.goto(url + "/")
        page.get_by_role("tab", name="Checkpoint Merger").click()
        for elem, title in (("primary", "tiny-a.safetensors"), ("secondary", "tiny-b")):
            page.locator(f"#modelmerger_{elem}_model_name input").click()
            page.get_by_role("option", name=re.compile(re.escape(title))).first.click()
        page.fill("#modelmerger_custom_name textarea, #modelmerger_custom_name input", "half-and-half")
        page.click("#modelmerger_merge")
        page.wait_for_function("document.querySelector('#modelmerger_result')?.innerText.includes('saved to')",
                               timeout=120_000)
        assert "half-and-half.safetensors" in page.inner_text("#modelmerger_result")
        page.locator("#sd_model_checkpoint input").click()
        assert page.get_by_role("option", name=re.compile("half-and-half")).count() >= 1
    assert (data / "models" / "Stable-diffusion" / "half-and-half.safetensors").is_file()
