"""Hires fix, styles and the X/Y/Z plot in the page, in Chromium."""
from __future__ import annotations

import pytest
from PIL import Image

from browser import data_dir_with_tiny_model, easel_page, easel_server, requires_chromium, set_number

pytestmark = [pytest.mark.browser, requires_chromium]


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_root):
    data = data_dir_with_tiny_model(tmp_path_factory.mktemp("features-ui-data"), model_root)
    (data / "styles.csv").write_text('name,prompt,negative_prompt\n"Night","{prompt}, at night","daylight"\n')
    with easel_server(data) as url:
        yield url, data


@pytest.fixture()
def page(server):
    with easel_page(server[0]) as page:
        yield page


def generated_info(page) -> str:
    page.click("#txt2img_generate")
    page.wait_for_function("document.querySelector('#txt2img_info textarea').value.includes('Seed: ')",
                           timeout=120_000)
    return page.input_value("#txt2img_info textarea")


def newest_png(data, folder: str):
    pngs = sorted((data / "outputs" / folder).rglob("*.png"), key=lambda p: p.stat().st_mtime)
    return Image.open(pngs[-1])


def test_the_hires_accordion_refines_at_twice_the_size(server, page):
    _, data = server
    page.fill("#txt2img_prompt textarea", "a red circle")
    set_number(page, "txt2img_steps", 2)
    page.click("#txt2img_hires_fix .label-wrap, #txt2img_hires_fix button")
    page.locator("#txt2img_hires_fix_enable_hr input[type=checkbox]").check()
    set_number(page, "txt2img_hires_fix_hr_second_pass_steps", 2)
    info = generated_info(page)
    assert "Hires upscale: 2" in info and "Hires upscaler: Latent" in info and "Size: 64x64" in info
    assert newest_png(data, "txt2img-images").size == (128, 128)


def test_a_style_applies_when_generating_and_can_be_written_into_the_prompt(server, page):
    page.fill("#txt2img_prompt textarea", "a red circle")
    set_number(page, "txt2img_steps", 1)
    page.locator("#txt2img_styles input").click()
    page.get_by_role("option", name="Night").click()
    page.keyboard.press("Escape")
    info = generated_info(page)
    assert info.startswith("a red circle, at night\nNegative prompt: daylight\n")
    page.click("#txt2img_styles_apply")
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value === 'a red circle, at night'")
    assert page.input_value("#txt2img_neg_prompt textarea") == "daylight"


def test_an_xyz_plot_makes_a_grid(server, page):
    _, data = server
    page.fill("#txt2img_prompt textarea", "a red circle")
    set_number(page, "txt2img_steps", 1)
    page.locator("#txt2img_script input").click()
    page.get_by_role("option", name="X/Y/Z plot").click()
    page.wait_for_selector("#txt2img_x_y_z_plot_x_type input", state="visible")
    page.locator("#txt2img_x_y_z_plot_x_type input").click()
    page.get_by_role("option", name="Steps", exact=True).click()
    page.fill("#txt2img_x_y_z_plot_x_values textarea, #txt2img_x_y_z_plot_x_values input", "1,2")
    page.locator("#txt2img_x_y_z_plot_draw_legend input[type=checkbox]").uncheck()
    info = generated_info(page)
    assert "Script: X/Y/Z plot" in info and "X Type: Steps" in info
    grid = newest_png(data, "txt2img-grids")
    assert grid.size == (128, 64)


def test_upscale_this_image_remakes_the_selected_result_through_the_hires_fix(server, page):
    _, data = server
    page.fill("#txt2img_prompt textarea", "a blue square")
    set_number(page, "txt2img_steps", 2)
    first = generated_info(page)
    seed = first.split("Seed: ")[1].split(",")[0]
    page.click("#txt2img_upscale")
    page.wait_for_function("document.querySelector('#txt2img_info textarea').value.includes('Hires upscale')",
                           timeout=120_000)
    info = page.input_value("#txt2img_info textarea")
    assert f"Seed: {seed}," in info and info.startswith("a blue square\n")
    assert newest_png(data, "txt2img-images").size == (128, 128)


def test_the_current_prompt_saved_as_a_style(server, page):
    _, data = server
    page.fill("#txt2img_prompt textarea", "{prompt}, watercolour")
    page.click("#txt2img_styles_edit .label-wrap, #txt2img_styles_edit button")
    page.locator("#txt2img_style_name input").fill("Watercolour")
    page.click("#txt2img_style_copy")
    page.wait_for_function("document.querySelector('#txt2img_style_prompt textarea').value.includes('watercolour')")
    page.click("#txt2img_style_save")
    page.wait_for_selector("#txt2img_style_status .easel-notice")
    assert "Watercolour" in (data / "styles.csv").read_text() and "{prompt}, watercolour" in (data / "styles.csv").read_text()
