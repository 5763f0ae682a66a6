"""The web UI in a real browser (Debian Chromium via Playwright): txt2img end to end."""
from __future__ import annotations

import datetime

import pytest
from PIL import Image

from browser import data_dir_with_tiny_model, easel_page, easel_server, requires_chromium, set_number

pytestmark = [pytest.mark.browser, requires_chromium]


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_root):
    data = data_dir_with_tiny_model(tmp_path_factory.mktemp("ui-data"), model_root)
    with easel_server(data) as url:
        yield url, data


@pytest.fixture()
def page(server):
    with easel_page(server[0]) as page:
        yield page



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
    # the cheap live preview of the latents shows under the bar while sampling
    preview = page.wait_for_selector("#txt2img_progress img.easel-live-preview")
    assert page.evaluate("(img) => img.complete && img.naturalWidth > 0", preview)
    page.click("#txt2img_interrupt")
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('Interrupted')",
                           timeout=60_000)


def latest_png(folder):
    files = sorted(folder.glob("*.png"))
    assert files, f"no PNG in {folder}"
    return files[-1]


def generate_txt2img(page, steps=2, seed=77, prompt="a red circle"):
    page.fill("#txt2img_prompt textarea", prompt)
    set_number(page, "txt2img_steps", steps)
    page.fill("#txt2img_seed input", str(seed))
    page.click("#txt2img_generate")
    page.wait_for_function(
        f"document.querySelector('#txt2img_info textarea').value.includes('Seed: {seed},')", timeout=120_000)


def test_send_to_inpaint_paint_a_stroke_and_only_the_stroke_changes(server, page):
    import numpy as np
    _, data = server
    generate_txt2img(page, seed=4242, prompt="a blue square")
    today = datetime.date.today().isoformat()
    source = data / "outputs" / "txt2img-images" / today / next(
        p.name for p in sorted((data / "outputs" / "txt2img-images" / today).glob("*-4242.png")))
    page.click("#txt2img_send_to_inpaint")
    # the image and its parameters moved over, and the inpaint editor is showing
    page.wait_for_selector("#img2img_inpaint canvas", state="visible")
    page.wait_for_function("document.querySelector('#img2img_prompt textarea').value === 'a blue square'")
    assert page.input_value("#img2img_seed input") == "4242"
    page.locator("#img2img_inpaint button[aria-label='Brush']").first.click()
    box = page.locator("#img2img_inpaint canvas").first.bounding_box()
    zoom = float(page.locator("#img2img_inpaint").get_by_text("%").first.inner_text().strip("% \n")) / 100
    side = 64 * zoom  # the 64 px picture, centred in the canvas
    left, top = box["x"] + (box["width"] - side) / 2, box["y"] + (box["height"] - side) / 2
    # a vertical stroke 12 px from the left edge of the picture
    page.mouse.move(left + 12 * zoom, top + 8 * zoom)
    page.mouse.down()
    for k in range(9, 57):
        page.mouse.move(left + 12 * zoom, top + k * zoom)
    page.mouse.up()
    set_number(page, "img2img_steps", 3)
    set_number(page, "img2img_denoising_strength", 1)
    page.click("#img2img_generate")
    page.wait_for_selector("#img2img_gallery img", timeout=120_000)
    out_png = latest_png(data / "outputs" / "img2img-images" / today)
    with Image.open(source) as a, Image.open(out_png) as b:
        before, after = np.asarray(a.convert("RGB")).astype(int), np.asarray(b.convert("RGB")).astype(int)
        assert "Mask blur: 4" in b.info["parameters"] and "Denoising strength: 1" in b.info["parameters"]
    assert after.shape == before.shape == (64, 64, 3)
    assert np.array_equal(after[:, 44:], before[:, 44:])  # far from the stroke: untouched
    assert np.abs(after[16:48, 8:16] - before[16:48, 8:16]).mean() > 5  # under the stroke: regenerated


def test_png_info_reads_the_infotext_and_sends_it_to_txt2img(server, page):
    _, data = server
    generate_txt2img(page, seed=999, prompt="a (green:1.1) star, yellow background")
    png = next((data / "outputs" / "txt2img-images" / datetime.date.today().isoformat()).glob("*-999.png"))
    page.fill("#txt2img_prompt textarea", "")
    page.get_by_role("tab", name="PNG Info").click()
    page.set_input_files("#pnginfo_image input[type=file]", str(png))
    page.wait_for_function("document.querySelector('#pnginfo_text textarea').value.includes('Seed: 999')")
    assert "a (green:1.1) star, yellow background" in page.inner_text("#pnginfo_html")
    page.click("#pnginfo_send_to_txt2img")
    page.wait_for_function(
        "document.querySelector('#txt2img_prompt textarea').value === 'a (green:1.1) star, yellow background'")
    assert page.input_value("#txt2img_seed input") == "999"


def test_pasting_an_infotext_and_pressing_the_arrow_fills_the_fields(server, page):
    page.fill("#txt2img_prompt textarea",
              "castle on a hill\nNegative prompt: fog\nSteps: 7, Sampler: DPM++ 2M Karras, CFG scale: 4.5, Seed: 31337, Size: 64x72")
    page.click("#txt2img_paste")
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value === 'castle on a hill'")
    assert page.input_value("#txt2img_neg_prompt textarea") == "fog"
    assert page.input_value("#txt2img_seed input") == "31337"
    assert page.locator("#txt2img_steps input[type=number]").input_value() == "7"
    assert page.locator("#txt2img_height input[type=number]").input_value() == "72"
    assert page.locator("#txt2img_scheduler input").input_value() == "Karras"


def test_tool_buttons_show_icons_that_render_without_an_emoji_font(server, page):
    """Headless Chromium here has no emoji font (nor do many minimal desktops): the small buttons carry SVG
    icons instead, which must load and have a size."""
    for elem in ("refresh_sd_model_checkpoint", "txt2img_random_seed", "txt2img_reuse_seed", "txt2img_paste"):
        button = page.locator(f"#{elem}")
        assert not any(ord(ch) > 0x2000 for ch in button.inner_text()), elem  # no emoji (or other symbol) text
        icon = button.locator("img")
        page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=icon.element_handle())
        box = icon.bounding_box()
        assert box and box["width"] >= 12 and box["height"] >= 12, (elem, box)
