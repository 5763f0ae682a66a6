"""The Train tab in Chromium: create an embedding, train it briefly on a folder of pictures, see the loss plot
and the previews."""
from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

from browser import data_dir_with_tiny_model, easel_page, easel_server, requires_chromium, set_number

pytestmark = [pytest.mark.browser, requires_chromium]


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_root):
    data = data_dir_with_tiny_model(tmp_path_factory.mktemp("train-ui-data"), model_root)
    pictures = data / "pictures"
    pictures.mkdir()
    for i, colour in enumerate(("red", "orange", "yellow")):
        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).ellipse((10 + i * 4, 10, 50, 50), fill=colour)
        image.save(pictures / f"{i}-ball.png")
    with easel_server(data) as url:
        yield url, data


def test_create_an_embedding_and_train_it(server):
    url, data = server
    with easel_page(url) as page:
        page.get_by_role("tab", name="Train", exact=True).click()
        page.fill("#train_new_name input, #train_new_name textarea", "blorp")
        page.click("#train_create")
        page.wait_for_function("document.querySelector('#train_create_status').innerText.includes('blorp')",
                               timeout=60_000)
        assert (data / "models" / "embeddings" / "blorp.pt").is_file()

        page.get_by_role("tab", name="Train", exact=True).last.click()
        page.wait_for_selector("#train_start", state="visible")
        assert page.input_value("#train_embedding input") == "blorp"  # the new one is chosen
        page.fill("#train_data_root input, #train_data_root textarea", "pictures")
        set_number(page, "train_width", 64)
        set_number(page, "train_height", 64)
        page.fill("#train_steps input", "6")
        page.fill("#train_image_every input", "3")
        page.fill("#train_save_every input", "0")
        page.click("#train_start")
        page.wait_for_function("document.querySelector('#train_progress').innerText.includes('finished at step 6')",
                               timeout=120_000)
        page.wait_for_selector("#train_previews img")
        assert page.locator("#train_previews .thumbnail-item").count() == 2
        page.wait_for_selector("#train_loss_plot canvas, #train_loss_plot svg", timeout=30_000)  # the loss plot
        assert (data / "train" / "blorp" / "loss.csv").read_text().count("\n") == 7
