"""The Prompt travel tab in a real browser (Debian Chromium via Playwright): keyframe previews, then a
two-keyframe video in the player, and a frame sent to txt2img."""
from __future__ import annotations

import datetime

import pytest

from browser import chromium_page, data_dir_with_tiny_model, easel_server, requires_chromium, set_number

pytestmark = [pytest.mark.browser, requires_chromium]


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_root):
    data = data_dir_with_tiny_model(tmp_path_factory.mktemp("travel-data"), model_root)
    with easel_server(data) as url:
        yield url, data


def test_a_two_keyframe_travel_previews_its_keyframes_and_shows_its_video(server):
    url, data = server
    with chromium_page() as page:
        page.goto(url + "/")
        page.get_by_role("tab", name="Prompt travel").click()
        page.wait_for_selector("#travel_keyframes")
        set_number(page, "travel_frames", 3)
        set_number(page, "travel_steps", 2)
        set_number(page, "travel_fps", 6)
        page.fill("#travel_seed input", "77")
        page.click("#travel_preview")
        page.wait_for_function("document.querySelectorAll('#travel_gallery img').length === 2", timeout=120_000)
        assert "2 keyframe stills" in page.inner_text("#travel_progress")
        page.click("#travel_generate")
        page.wait_for_selector("#travel_video video[src]", timeout=120_000)
        assert "4 frames, 64×64 at 6 fps" in page.inner_text("#travel_progress")
        page.wait_for_function("document.querySelectorAll('#travel_gallery img').length === 4")
        page.click("#travel_send_to_txt2img")
        page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value === "
                               "'a red circle, white background'")
        assert page.input_value("#txt2img_seed input") == "77"
    folder = data / "outputs" / "travel" / datetime.date.today().isoformat()
    videos = sorted(p.name for p in folder.glob("*.mp4"))
    assert videos == ["00001-77.mp4"]  # the previews made 00000-77 (stills only)
    assert len(list((folder / "00001-77").glob("frame-*.png"))) == 4
