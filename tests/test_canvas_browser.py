"""The Outpaint canvas and the Infinite zoom tab in a real browser (Debian Chromium via Playwright)."""
from __future__ import annotations

import datetime
import io

import numpy as np
import pytest
from PIL import Image

from browser import chromium_page, data_dir_with_tiny_model, easel_server, requires_chromium, set_number

pytestmark = [pytest.mark.browser, requires_chromium]
ROOT = "document.getElementById('outpaint_canvas_root')"


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_root):
    data = data_dir_with_tiny_model(tmp_path_factory.mktemp("canvas-data"), model_root)
    with easel_server(data) as url:
        yield url, data



def canvas_data(page) -> dict:
    return page.evaluate(f"({{...{ROOT}.dataset}})")


def open_outpaint(page, url):
    page.goto(url + "/")
    page.get_by_role("tab", name="Outpaint").click()
    page.wait_for_function(f"{ROOT} && {ROOT}.dataset.patches !== undefined")


def generate_and_wait(page):
    page.click("#outpaint_generate")
    page.wait_for_function(f"{ROOT}.dataset.staging > 0", timeout=120_000)


def export(page, button: str) -> Image.Image:
    with page.expect_download() as download:
        page.click(f"#{button}")
    image = Image.open(io.BytesIO(download.value.path().read_bytes()))
    image.load()
    return image


def drag_box(page, start: tuple[int, int], end: tuple[int, int]) -> None:
    """Mouse drag between two world points (the page says where they are on screen)."""
    a = page.evaluate("([x, y]) => window.easelCanvas.worldToScreen(x, y)", list(start))
    b = page.evaluate("([x, y]) => window.easelCanvas.worldToScreen(x, y)", list(end))
    page.mouse.move(a["x"], a["y"])
    page.mouse.down()
    page.mouse.move(b["x"], b["y"], steps=8)
    page.mouse.up()


def test_grow_the_picture_accept_undo_export_and_survive_a_reload(server):
    url, data = server
    with chromium_page() as page:
        open_outpaint(page, url)
        assert canvas_data(page)["box"] == "0,0,64,64"  # the tiny checkpoint's 64 px, not 512
        page.fill("#outpaint_prompt textarea", "a red circle")
        set_number(page, "outpaint_steps", 2)
        page.fill("#outpaint_seed input", "321")
        set_number(page, "outpaint_overlap", 16)
        generate_and_wait(page)  # an empty box: txt2img
        assert "txt2img" in page.inner_text("#outpaint_progress")
        page.click("#outpaint_accept")
        page.wait_for_function(f"{ROOT}.dataset.patches === '1'")
        first = export(page, "outpaint_export_whole").convert("RGB")
        assert first.size == (64, 64)

        drag_box(page, (32, 32), (64, 32))  # half over the picture, half over nothing
        assert canvas_data(page)["box"] == "32,0,64,64"
        set_number(page, "outpaint_batch_size", 2)
        generate_and_wait(page)
        assert "2 candidate(s) (outpaint)" in page.inner_text("#outpaint_progress")
        assert canvas_data(page)["staging"] == "2" and page.inner_text("#outpaint_candidate") == "1 / 2"
        page.click("#outpaint_next")
        assert page.inner_text("#outpaint_candidate") == "2 / 2"
        page.click("#outpaint_discard")
        assert canvas_data(page)["staging"] == "0" and canvas_data(page)["patches"] == "1"
        generate_and_wait(page)
        page.click("#outpaint_prev")
        assert page.inner_text("#outpaint_candidate") == "2 / 2"
        page.click("#outpaint_accept")
        page.wait_for_function(f"{ROOT}.dataset.patches === '2'")

        page.click("#outpaint_undo")
        assert canvas_data(page)["patches"] == "1" and canvas_data(page)["redo"] == "1"
        page.click("#outpaint_redo")
        assert canvas_data(page)["patches"] == "2" and canvas_data(page)["redo"] == "0"

        whole = export(page, "outpaint_export_whole")
        assert whole.size == (96, 64)  # larger than the first image: it grew by half a box
        info = whole.info["parameters"]
        assert "Seed: 322" in info and "Denoising strength" in info and "Mask blur" in info  # the 2nd candidate
        pixels, before = np.asarray(whole.convert("RGB")), np.asarray(first)
        # the old picture is untouched farther than the 16 px band from the new part (x >= 64)
        assert np.array_equal(pixels[:, :48], before[:, :48])
        assert not np.array_equal(pixels[:, 48:64], before[:, 48:64])

        page.wait_for_timeout(500)  # the state is saved shortly after each change
        page.reload()
        page.get_by_role("tab", name="Outpaint").click()
        page.wait_for_function(f"{ROOT} && {ROOT}.dataset.patches === '2'")
        assert canvas_data(page)["box"] == "32,0,64,64"
        again = export(page, "outpaint_export_whole")
        assert np.array_equal(np.asarray(again.convert("RGB")), pixels)
    saved = list((data / "outputs" / "outpaint-images" / datetime.date.today().isoformat()).glob("*.png"))
    assert len(saved) == 1 + 2 + 2  # every candidate is saved, as in the other tabs


def test_a_refused_box_shows_the_servers_message(server):
    url, _ = server
    with chromium_page() as page:
        open_outpaint(page, url)
        # a box over 2048 px cannot be asked for from the page (the sliders stop there); the server's
        # 422 for an unknown checkpoint shows the same way
        page.evaluate("window.easelCanvas.generate(['checkpoint', 'steps'], ['no-such-model', 2])")
        error = page.wait_for_selector("#outpaint_progress .easel-error")
        assert error.inner_text().startswith("checkpoint:")


def test_upload_places_an_image_at_the_box_and_exports_show_it_pixel_for_pixel(server, tmp_path):
    url, _ = server
    rng = np.random.default_rng(1)
    picture = rng.integers(0, 256, (40, 24, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "upload.png")
    with chromium_page() as page:  # a fresh browser profile: an empty canvas
        open_outpaint(page, url)
        drag_box(page, (32, 32), (32 + 16, 32 - 8))
        assert canvas_data(page)["box"] == "16,-8,64,64"  # the box goes anywhere on the grid, even above 0
        page.set_input_files("#outpaint_upload", str(tmp_path / "upload.png"))
        page.wait_for_function(f"{ROOT}.dataset.patches === '1'")
        assert np.array_equal(np.asarray(export(page, "outpaint_export_whole").convert("RGB")), picture)
        # look at the picture's lower right only (as after panning): the visible export is that part
        page.evaluate("""() => { const c = window.easelCanvas.instance();
                                 c.state.view = { x: 26, y: 7, scale: 8 }; c.render(); }""")
        view = page.evaluate("window.easelCanvas.instance().visibleRect()")
        assert (view["x"], view["y"]) == (26, 7) and view["w"] > 24 and view["h"] > 40
        visible = np.asarray(export(page, "outpaint_export_visible").convert("RGB"))
        assert np.array_equal(visible, picture[7 + 8:, 26 - 16:])  # the picture lies at (16, -8)
        page.click("#outpaint_new")  # declined (Playwright dismisses the confirm): nothing is lost
        page.click("#outpaint_undo")
        assert canvas_data(page)["patches"] == "0" and canvas_data(page)["redo"] == "1"


def test_a_two_keyframe_zoom_shows_its_video(server):
    url, data = server
    with chromium_page() as page:
        page.goto(url + "/")
        page.get_by_role("tab", name="Infinite zoom").click()
        page.wait_for_selector("#zoom_prompts")
        set_number(page, "zoom_keyframes", 2)
        set_number(page, "zoom_steps", 2)
        set_number(page, "zoom_fps", 8)
        set_number(page, "zoom_seconds_per_keyframe", 0.5)
        page.fill("#zoom_seed input", "99")
        page.click("#zoom_generate")
        page.wait_for_selector("#zoom_video video[src]", timeout=120_000)
        assert "9 frames, 3 keyframes" in page.inner_text("#zoom_progress")
    folder = data / "outputs" / "zoom" / datetime.date.today().isoformat()
    assert [p.name for p in folder.glob("*.mp4")] == ["00000-99.mp4"]
    assert len(list((folder / "00000-99").glob("keyframe-*.png"))) == 3
