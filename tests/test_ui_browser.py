"""The web UI in a real browser (Debian Chromium via Playwright): txt2img end to end."""
from __future__ import annotations

import datetime
import shutil

import pytest
from PIL import Image

from browser import chromium_page, easel_server, requires_chromium

pytestmark = [pytest.mark.browser, requires_chromium]


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_root):
    data = tmp_path_factory.mktemp("ui-data")
    ckpts = data / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    shutil.copy(model_root / "models" / "Stable-diffusion" / "tiny-a.safetensors", ckpts / "tiny-a.safetensors")
    with easel_server(data) as url:
        yield url, data


@pytest.fixture()
def page(server):
    url, _ = server
    with chromium_page() as page:
        page.goto(url + "/")
        page.wait_for_selector("#txt2img_prompt textarea")
        yield page


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def test_type_prompt_generate_and_find_the_png_with_infotext(server, page):
    _, data = server
    assert page.input_value("#sd_model_checkpoint input").startswith("tiny-a.safetensors")
    assert page.locator("#txt2img_width input[type=number]").input_value() == "64"  # the checkpoint's trained size
    page.fill("#txt2img_prompt textarea", "a red circle, (blue background:1.2)")
    page.fill("#txt2img_neg_prompt textarea", "blurry")
    set_number(page, "txt2img_steps", 3)
    page.fill("#txt2img_seed input", "1234")
    page.press("#txt2img_prompt textarea", "Control+Enter")  # A1111's shortcut
    page.wait_for_selector("#txt2img_gallery img", timeout=120_000)
    page.wait_for_function("document.querySelector('#txt2img_info textarea').value.includes('Seed: 1234')")
    info = page.input_value("#txt2img_info textarea")
    assert info.startswith("a red circle, (blue background:1.2)\nNegative prompt: blurry\nSteps: 3,")
    folder = data / "outputs" / "txt2img-images" / datetime.date.today().isoformat()
    png = folder / "00000-1234.png"
    assert png.is_file(), list(folder.iterdir()) if folder.exists() else "no output folder"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (64, 64)
        assert im.info["parameters"] == info
    # the gallery shows the PNG itself (format="png"), so a download keeps the infotext
    src = page.locator("#txt2img_gallery img").first.get_attribute("src")
    assert ".png" in src


def test_recycle_button_reuses_the_last_seed(server, page):
    set_number(page, "txt2img_steps", 1)
    page.click("#txt2img_generate")
    page.wait_for_function("document.querySelector('#txt2img_info textarea').value.includes('Seed: ')")
    info = page.input_value("#txt2img_info textarea")
    seed = info.split("Seed: ")[1].split(",")[0]
    assert page.input_value("#txt2img_seed input") == "-1"
    page.click("#txt2img_reuse_seed")
    page.wait_for_function(f"document.querySelector('#txt2img_seed input').value === '{seed}'")
    page.click("#txt2img_random_seed")
    page.wait_for_function("document.querySelector('#txt2img_seed input').value === '-1'")


def test_bad_input_shows_a_readable_message(server, page):
    page.fill("#txt2img_seed input", "99999999999")
    page.click("#txt2img_generate")
    error = page.wait_for_selector("#txt2img_progress .easel-error")
    text = error.inner_text()
    assert text.startswith("seed:") and "Traceback" not in text


def test_interrupt_stops_a_long_run(server, page):
    set_number(page, "txt2img_steps", 150)
    set_number(page, "txt2img_batch_count", 20)
    page.click("#txt2img_generate")
    page.wait_for_selector("#txt2img_progress .easel-progress[data-state=running]")
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('step')")
    assert "ETA" in page.inner_text("#txt2img_progress") or "step" in page.inner_text("#txt2img_progress")
    page.click("#txt2img_interrupt")
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('Interrupted')",
                           timeout=60_000)
