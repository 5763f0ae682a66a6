"""Styles (A1111's styles.csv: placeholder or append, several files, bad rows, editing, the API) and dynamic
prompts (variants per image, wildcards, combinatorial, reproducible from the infotext)."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app import build_app
from webui.features.styles import Style, StyleLibrary, merge
from webui.generation.requests import Txt2ImgRequest, fields_from_infotext
from webui.images.infotext import parse_infotext

BASE = dict(prompt="a red circle", steps=2, width=64, height=64, seed=3, sampler_name="Euler",
            checkpoint="tiny-a.safetensors")
CSV = ('name,prompt,negative_prompt\n'
       '"Cinematic","cinematic still of {prompt}, film grain","cartoon, drawing"\n'
       'Blue bg,blue background,\n'
       ',"a row without a name",\n'
       '"Too many","a","b","c"\n')


@pytest.fixture()
def styled(easel):
    data = easel.settings.data_dir
    (data / "styles.csv").write_text(CSV, encoding="utf-8")
    (data / "styles-more.csv").write_text('name,prompt,negative_prompt\n"Night","at night","daylight"\n')
    easel.styles.refresh()
    return easel


def test_a1111_merge_rule():
    assert merge("cinematic still of {prompt}, grain", "a cat") == "cinematic still of a cat, grain"
    assert merge("blue background", "a cat") == "a cat, blue background"
    assert merge("blue background", "") == "blue background"
    assert merge("", "a cat") == "a cat"


def test_several_files_bad_rows_skipped_with_a_message(styled, caplog):
    names = [s.name for s in styled.styles.all()]
    assert names == ["Cinematic", "Blue bg", "Night"]
    assert any("row 4" in p for p in styled.styles.problems) and any("row 5" in p for p in styled.styles.problems)
    assert styled.styles.get("Night").path.name == "styles-more.csv"


def test_styles_apply_in_order_to_both_prompts(styled):
    model = styled.load_model("tiny-a.safetensors")
    result = styled.engine.generate(model, Txt2ImgRequest(**BASE, negative_prompt="blur",
                                                           alwayson_scripts={"styles": {"styles": ["Cinematic", "Night"]}}))
    info = parse_infotext(result.infotexts[0])
    assert info["Prompt"] == "cinematic still of a red circle, film grain, at night"
    assert info["Negative prompt"] == "blur, cartoon, drawing, daylight"
    plain = styled.engine.generate(model, Txt2ImgRequest(**BASE))
    assert not np.array_equal(np.asarray(result.images[0]), np.asarray(plain.images[0]))


def test_saving_editing_and_deleting_keep_the_csv_format(styled):
    library = styled.styles
    library.save(Style("Mine", "{prompt}, watercolour", "photo"))
    library.save(Style("Night", "by moonlight", "daylight"))  # edited where it lives
    again = StyleLibrary(library.patterns, library.default_file)
    assert again.get("Mine").prompt == "{prompt}, watercolour" and again.get("Mine").path.name == "styles.csv"
    assert again.get("Night").prompt == "by moonlight" and again.get("Night").path.name == "styles-more.csv"
    library.delete("Mine")
    assert StyleLibrary(library.patterns, library.default_file).get("Mine") is None
    text = (styled.settings.data_dir / "styles.csv").read_text()
    assert text.startswith("name,prompt,negative_prompt") and "Cinematic" in text


def test_the_api_lists_and_applies_styles(styled):
    styled.manager.preferred = "tiny-a.safetensors"
    styled.settings = replace(styled.settings, api=True, nowebui=True)
    with TestClient(build_app(styled, styled.settings)) as client:
        listed = client.get("/sdapi/v1/prompt-styles").json()
        assert listed[0] == {"name": "Cinematic", "prompt": "cinematic still of {prompt}, film grain",
                             "negative_prompt": "cartoon, drawing"}
        r = client.post("/sdapi/v1/txt2img", json={**BASE, "styles": ["Blue bg"]})
        info = json.loads(r.json()["info"])
        assert info["infotexts"][0].startswith("a red circle, blue background\n") and "styles" not in info["easel_ignored"]
        bad = client.post("/sdapi/v1/txt2img", json={**BASE, "styles": ["Nope"]})
        assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "styles"


# -- dynamic prompts ----------------------------------------------------------------------------------


def generate(easel, **changes):
    scripts = changes.pop("alwayson_scripts", {})
    return easel.engine.generate(easel.load_model("tiny-a.safetensors"),
                                 Txt2ImgRequest(**{**BASE, **changes}, alwayson_scripts=scripts))


def test_variants_per_image_drawn_with_each_images_seed(easel):
    result = generate(easel, prompt="a {red|blue|green} {circle|square}", batch_size=4, n_iter=2)
    assert len(set(result.prompts)) > 1 and all(p.startswith("a ") and "{" not in p for p in result.prompts)
    again = generate(easel, prompt="a {red|blue|green} {circle|square}", batch_size=4, n_iter=2)
    assert result.prompts == again.prompts  # the same seeds give the same prompts
    info = parse_infotext(result.infotexts[5])
    assert info["Prompt"] == result.prompts[5] and info["Template"] == "a {red|blue|green} {circle|square}"
    # image 5 alone, from its own infotext (prompt and seed pasted), is the same picture (batched and single
    # UNet calls round differently by a step at most, as in test_generation's batch test)
    pasted = fields_from_infotext(result.infotexts[5], Txt2ImgRequest)
    single = generate(easel, prompt=pasted["prompt"], seed=pasted["seed"])
    diff = np.abs(np.asarray(single.images[0], np.int16) - np.asarray(result.images[5], np.int16))
    assert diff.max() <= 2
    other = generate(easel, prompt=result.prompts[5], seed=pasted["seed"] + 1)
    assert np.abs(np.asarray(other.images[0], np.int16) - np.asarray(result.images[5], np.int16)).mean() > 1


def test_wildcards_and_several_of_a_list(easel):
    folder = easel.settings.wildcards_dir
    folder.mkdir(parents=True)
    (folder / "colour.txt").write_text("red\nblue\ngreen\n")
    result = generate(easel, prompt="a __colour__ circle, {2$$big|small|round}", batch_size=4)
    for prompt in result.prompts:
        colour, rest = prompt.removeprefix("a ").split(" circle, ")
        assert colour in ("red", "blue", "green") and len(rest.split(",")) == 2


def test_combinatorial_walks_every_combination(easel):
    result = generate(easel, prompt="a {red|blue} {circle|square}", batch_size=2, n_iter=3,
                      alwayson_scripts={"dynamic prompts": {"combinatorial": True}})
    assert result.prompts[:4] == ["a red circle", "a red square", "a blue circle", "a blue square"]
    assert result.prompts[4:] == result.prompts[:2]  # more images than combinations: from the start again


def test_plain_prompts_and_a_switched_off_feature_are_left_alone(easel):
    assert generate(easel).prompts == ["a red circle"]
    off = generate(easel, prompt="a {red|blue} circle", alwayson_scripts={"dynamic prompts": {"enabled": False}})
    assert off.prompts == ["a {red|blue} circle"]
