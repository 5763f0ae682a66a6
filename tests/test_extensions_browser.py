"""Extensions in the page: a feature's settings as an accordion built from their description, an
extension's own tab, and the Extensions tab with each one's state."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from browser import chromium_page, data_dir_with_tiny_model, easel_server, requires_chromium, set_number

pytestmark = [pytest.mark.browser, requires_chromium]


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_root):
    data = data_dir_with_tiny_model(tmp_path_factory.mktemp("ext-ui-data"), model_root)
    shutil.copytree(Path(__file__).resolve().parent / "extensions", data / "extensions")
    with easel_server(data) as url:
        yield url, data


def test_a_features_accordion_applies_its_settings_and_paste_fills_them(server):
    url, _ = server
    with chromium_page() as page:
        page.goto(url + "/")
        page.wait_for_selector("#txt2img_prompt textarea")
        page.click("#txt2img_probe button, #txt2img_probe .label-wrap")
        page.locator("#txt2img_probe_invert input[type=checkbox]").check()
        page.fill("#txt2img_probe_suffix textarea, #txt2img_probe_suffix input", ", at night")
        page.fill("#txt2img_prompt textarea", "a red circle")
        set_number(page, "txt2img_steps", 2)
        page.click("#txt2img_generate")
        page.wait_for_function("document.querySelector('#txt2img_info textarea').value.includes('Probe invert')",
                               timeout=120_000)
        info = page.input_value("#txt2img_info textarea")
        assert info.startswith("a red circle, at night\n") and "Probe invert: True" in info
        # the same infotext pasted back turns the feature's widgets on again
        page.locator("#txt2img_probe_invert input[type=checkbox]").uncheck()
        page.fill("#txt2img_prompt textarea", info)
        page.click("#txt2img_paste")
        page.wait_for_function("document.querySelector('#txt2img_probe_invert input').checked === true")


def test_an_extensions_tab_and_the_extensions_list(server):
    url, _ = server
    with chromium_page() as page:
        page.goto(url + "/")
        page.wait_for_selector("#txt2img_prompt textarea")
        page.get_by_role("tab", name="Probe").click()
        page.wait_for_selector("#probe_tab_text")
        page.get_by_role("tab", name="Extensions").click()
        table = page.wait_for_selector("#extensions_table table")
        text = table.inner_text()
        assert "probe" in text and "enabled" in text
        assert "broken-import" in text and "failed" in text and "RuntimeError" in text
        assert "cfg-rescale" in text
