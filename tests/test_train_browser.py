"""The Train tab in Chromium: create an embedding, train it briefly on a folder of pictures, see the loss plot
and the previews; create a .safetensors one and train it on uploaded pictures, the previews and the loss plot
showing while it runs."""
from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

from browser import data_dir_with_tiny_model, easel_page, easel_server, requires_chromium, set_number

pytestmark = [pytest.mark.browser, requires_chromium]
PLOT = "#train_loss_plot .vega-embed svg.marks, #train_loss_plot .vega-embed canvas"  # drawn (not the empty icon)


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


def create_and_open_train(page, name: str, file_format: str | None = None) -> None:
    """Create embedding `name` in the Create tab, then open the Train sub-tab, where it is the one chosen."""
    page.get_by_role("tab", name="Train", exact=True).click()
    page.fill("#train_new_name input, #train_new_name textarea", name)
    if file_format is not None:
        page.check(f"#train_file_format input[value={file_format}]")
    page.click("#train_create")
    page.wait_for_function(f"document.querySelector('#train_create_status').innerText.includes('{name}')",
                           timeout=60_000)
    page.get_by_role("tab", name="Train", exact=True).last.click()
    page.wait_for_selector("#train_start", state="visible")
    assert page.input_value("#train_embedding input") == name  # the new one is chosen


def start_training(page, steps: int, image_every: int) -> None:
    """64×64 pictures, `steps` steps, a preview every `image_every`, no copies; start."""
    set_number(page, "train_width", 64)
    set_number(page, "train_height", 64)
    page.fill("#train_steps input", str(steps))
    page.fill("#train_image_every input", str(image_every))
    page.fill("#train_save_every input", "0")
    page.click("#train_start")


def test_create_an_embedding_and_train_it(server):
    url, data = server
    with easel_page(url) as page:
        create_and_open_train(page, "blorp")
        assert (data / "models" / "embeddings" / "blorp.pt").is_file()
        page.fill("#train_data_root input, #train_data_root textarea", "pictures")
        start_training(page, steps=6, image_every=3)
        page.wait_for_function("document.querySelector('#train_progress').innerText.includes('finished at step 6')",
                               timeout=120_000)
        page.wait_for_selector("#train_previews img")
        assert page.locator("#train_previews .thumbnail-item").count() == 2
        page.wait_for_selector(PLOT, timeout=30_000)  # the loss plot
        assert (data / "train" / "blorp" / "loss.csv").read_text().count("\n") == 7


def test_uploaded_pictures_and_a_live_preview(server, tmp_path):
    url, data = server
    uploads = []
    for i, colour in enumerate(("blue", "green")):
        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).rectangle((12, 12 + i * 6, 52, 52), fill=colour)
        image.save(tmp_path / f"{i}-box.png")
        uploads.append(str(tmp_path / f"{i}-box.png"))
    (tmp_path / "0-box.txt").write_text("blue box")
    uploads.append(str(tmp_path / "0-box.txt"))
    with easel_page(url) as page:
        create_and_open_train(page, "boxy", file_format="safetensors")
        assert (data / "models" / "embeddings" / "boxy.safetensors").is_file()
        page.set_input_files("#train_uploads input[type=file]", uploads)
        page.wait_for_function("document.querySelectorAll('#train_uploads tr.file').length === 3", timeout=30_000)
        start_training(page, steps=5000, image_every=2)
        # while the job runs: a preview in the gallery, the loss plot, and step / loss / lr / ETA above them
        page.wait_for_selector("#train_previews img", timeout=120_000)
        page.wait_for_selector(PLOT, timeout=30_000)
        progress = page.inner_text("#train_progress")
        assert "loss" in progress and "lr" in progress and "step" in progress, progress
        assert "finished" not in progress and "interrupted" not in progress, progress
        page.wait_for_function("document.querySelector('#train_progress').innerText.includes('ETA')",
                               timeout=30_000)
        page.click("#train_interrupt")
        page.wait_for_function("document.querySelector('#train_progress').innerText.includes('interrupted at step')",
                               timeout=120_000)
        assert (data / "models" / "embeddings" / "boxy.safetensors").is_file()
        assert not (data / "models" / "embeddings" / "boxy.pt").exists()
