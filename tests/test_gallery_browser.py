"""The Gallery tab in Chromium: search, open an image with its parameters, send it to img2img, find similar
by dropping a picture, and "Find similar" under txt2img's results."""
from __future__ import annotations

import pytest
from PIL import Image

from browser import data_dir_with_tiny_model, easel_page, easel_server, requires_chromium, set_number

pytestmark = [pytest.mark.browser, requires_chromium]


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_root):
    data = data_dir_with_tiny_model(tmp_path_factory.mktemp("gallery-ui-data"), model_root)
    with easel_server(data) as url:
        yield url, data


def generate(page, prompt: str, seed: int) -> None:
    page.fill("#txt2img_prompt textarea", prompt)
    page.fill("#txt2img_seed input", str(seed))
    page.click("#txt2img_generate")
    page.wait_for_function(f"document.querySelector('#txt2img_info textarea').value.includes('Seed: {seed},')",
                           timeout=120_000)


def shown(page) -> int:
    return page.locator("#gallery_gallery .thumbnail-item, #gallery_gallery button.thumbnail-item").count()


def test_search_open_send_and_find_similar(server, tmp_path):
    url, data = server
    with easel_page(url) as page:
        set_number(page, "txt2img_steps", 2)
        generate(page, "a red circle", 11)
        generate(page, "a blue square", 12)

        page.get_by_role("tab", name="Gallery", exact=True).click()
        page.wait_for_function("document.querySelector('#gallery_progress').innerText.includes('2 image(s)')",
                               timeout=60_000)
        page.fill("#gallery_query textarea, #gallery_query input", "circle")
        page.click("#gallery_search")
        page.wait_for_function("document.querySelector('#gallery_progress').innerText.includes('1 image(s)')")
        assert shown(page) == 1

        page.locator("#gallery_gallery .thumbnail-item").first.click()
        page.wait_for_function("document.querySelector('#gallery_info textarea').value.includes('Seed: 11,')")
        page.wait_for_selector("#gallery_selected img")
        page.click("#gallery_send_to_img2img")
        page.wait_for_selector("#img2img_image img", state="visible", timeout=30_000)
        page.wait_for_function("document.querySelector('#img2img_prompt textarea').value === 'a red circle'")

        page.get_by_role("tab", name="Gallery", exact=True).click()
        saved = sorted((data / "outputs" / "txt2img-images").rglob("*.png"))
        blue = next(p for p in saved if p.name.endswith("-12.png"))
        Image.open(blue).convert("RGB").resize((48, 48)).save(tmp_path / "copy.jpg")
        page.set_input_files("#gallery_drop input[type=file]", str(tmp_path / "copy.jpg"))
        page.wait_for_function("document.querySelector('#gallery_progress').innerText.includes('Similar images')",
                               timeout=60_000)
        assert "1 same picture" in page.inner_text("#gallery_progress")
        page.locator("#gallery_gallery .thumbnail-item").first.click()
        page.wait_for_function("document.querySelector('#gallery_info textarea').value.includes('Seed: 12,')")

        page.click("#gallery_search")  # the circle again, so that the next listing is told apart
        page.wait_for_function("document.querySelector('#gallery_progress').innerText.includes('1 image(s)')")
        page.get_by_role("tab", name="txt2img", exact=True).click()
        page.click("#txt2img_find_similar")  # txt2img's last result: the blue square
        page.wait_for_selector("#gallery_query", state="visible")  # the page moved to the Gallery tab
        page.wait_for_function("document.querySelector('#gallery_progress').innerText.includes('Similar images')",
                               timeout=60_000)
        page.locator("#gallery_gallery .thumbnail-item").first.click()
        page.wait_for_function("document.querySelector('#gallery_info textarea').value.includes('Seed: 12,')")
