"""Each field described once: every described field round-trips through an infotext and back, and the
widgets, the API schema and the engine's infotext all come from the same description."""
from __future__ import annotations

import typing

import gradio as gr
import pytest
from PIL import Image
from pydantic import BaseModel

from webui.api.schemas import ApiTxt2ImgRequest
from webui.generation.fields import base_type, bounds, described, infotext_params, param_of, values_from_infotext
from webui.generation.outpaint import OutpaintParams
from webui.generation.requests import GenerationParams, Img2ImgRequest, Txt2ImgRequest, fields_from_infotext
from webui.generation.zoom import ZoomRequest
from webui.images.infotext import create_infotext, parse_infotext
from webui.ui.controls import widget

MASK = Image.new("L", (64, 64), 0)
MASK.paste(255, (0, 0, 32, 64))
IMAGE = Image.new("RGB", (64, 64), "red")

# fields a request has but no infotext key: each is a decision (A1111 does not write them either, or
# they are run facts written under another key: the checkpoint as Model/Model hash)
NOT_IN_INFOTEXT = {
    Txt2ImgRequest: {"batch_size", "n_iter", "checkpoint", "vae"},
    Img2ImgRequest: {"batch_size", "n_iter", "checkpoint", "vae", "init_image", "mask", "resize_mode", "scale_by"},
    OutpaintParams: {"batch_size", "n_iter", "checkpoint", "vae", "overlap", "prefill", "denoising_strength",
                     "outpaint_strength", "mask_blur"},
    ZoomRequest: {"batch_size", "n_iter", "checkpoint", "vae", "keyframes", "direction", "mask_width", "mask_blur",
                  "fps", "seconds_per_keyframe", "hold_first", "hold_last"},
}


def other_value(model: type[BaseModel], name: str):
    """A valid value different from the field's default."""
    f = model.model_fields[name]
    param = param_of(f)
    default = f.get_default(call_default_factory=True)
    kind = base_type(f)
    low, high = bounds(model, name)
    if param.choices is not None:
        return (not default) if kind is bool else (int(default) + 1) % len(param.choices)
    if param.options is not None:
        return next(o for o in param.options() if o != default)
    if typing.get_origin(f.annotation) is typing.Literal:
        return next(v for v in typing.get_args(f.annotation) if v != default)
    if kind is bool:
        return not default
    if kind is int:
        step = int(param.step or 1)
        base = default if default is not None else int(low)
        value = base + 3 * step
        return value if high is None or value <= high else base - step
    if kind is float:
        value = (default or 0.0) + 0.25
        return value if high is None or value <= high else (default or 0.0) - 0.25
    return "a prompt, with: commas (and weights:1.2) [a:b:3]"


def request_with_every_field(model: type[BaseModel]) -> BaseModel:
    values = {name: other_value(model, name) for name, _, p in described(model) if p.infotext}
    if "subseed_strength" in values:  # written only with a variation strength above 0
        values["subseed_strength"] = 0.5
    if model is Img2ImgRequest:
        values |= {"init_image": IMAGE, "mask": MASK}
    if model is OutpaintParams:
        values |= {"width": 256, "height": 192}
    elif "width" in values:
        values |= {"width": 256, "height": 192}
    return model(**values)


@pytest.mark.parametrize("model", list(NOT_IN_INFOTEXT), ids=lambda m: m.__name__)
def test_every_described_field_round_trips_through_the_infotext(model):
    request = request_with_every_field(model)
    params = infotext_params(request)
    text = create_infotext(request.prompt, request.negative_prompt,
                           {k: v for k, v in params.items() if k not in ("Prompt", "Negative prompt")})
    back = values_from_infotext(parse_infotext(text), model)
    with_key = {name for name, _, p in described(model) if p.infotext}
    assert set(back) == with_key
    for name in with_key:
        assert back[name] == getattr(request, name), (name, back[name], getattr(request, name))
        assert back[name] != model.model_fields[name].get_default(call_default_factory=True) or name in ("width", "height")
    no_key = {name for name in model.model_fields if name not in with_key}
    assert no_key - {"alwayson_scripts", "script_name", "script_args", "override_settings", "prompts", "init_image",
                     "box"} == NOT_IN_INFOTEXT[model] - {"init_image"}


def test_fields_are_left_out_when_their_rule_says_so():
    plain = infotext_params(Txt2ImgRequest(seed=1, width=64, height=64))
    assert "Variation seed" not in plain and "Clip skip" not in plain and plain["Size"] == "64x64"
    img2img = infotext_params(Img2ImgRequest(init_image=IMAGE, width=64, height=64))
    assert "Denoising strength" in img2img and "Mask blur" not in img2img  # mask fields only with a mask


def test_old_combined_sampler_names_paste_as_sampler_and_schedule():
    text = "x\nSteps: 5, Sampler: DPM++ 2M Karras, CFG scale: 4, Seed: 1, Size: 64x64"
    values = fields_from_infotext(text, Txt2ImgRequest)
    assert (values["sampler_name"], values["scheduler"]) == ("DPM++ 2M", "Karras")


def test_the_engine_writes_what_the_fields_read_back(easel):
    model = easel.load_model("tiny-a.safetensors")
    request = Txt2ImgRequest(prompt="a, b: c", negative_prompt="blur", steps=3, sampler_name="Euler",
                             scheduler="Karras", cfg_scale=4.5, seed=11, width=64, height=64, subseed=9,
                             subseed_strength=0.25, clip_skip=2)
    result = easel.engine.txt2img(model, request)
    back = fields_from_infotext(result.infotexts[0], Txt2ImgRequest)
    for name in back:
        assert back[name] == getattr(result.request, name), name
    assert set(back) == {n for n, _, p in described(Txt2ImgRequest) if p.infotext}


def test_widgets_and_the_api_schema_come_from_the_same_description():
    with gr.Blocks():
        steps = widget(Txt2ImgRequest, "steps", "t_steps")
        capped = widget(Txt2ImgRequest, "steps", "t_steps2", maximum=150)
        width = widget(Txt2ImgRequest, "width", "t_width", value=512)
        fill = widget(Img2ImgRequest, "inpainting_fill", "t_fill")
        sampler = widget(Txt2ImgRequest, "sampler_name", "t_sampler")
    field = GenerationParams.model_fields["steps"]
    assert (steps.minimum, steps.maximum, steps.value, steps.label) == (1, 500, field.default, "Sampling steps")
    assert capped.maximum == 150
    assert (width.minimum, width.maximum, width.step) == (64, 4096, 8)
    assert fill.choices[fill.value if isinstance(fill.value, int) else 0] and fill.value == "original"
    assert sampler.value == "DPM++ 2M" and ("Euler a", "Euler a") in sampler.choices
    schema = ApiTxt2ImgRequest.model_json_schema()["properties"]
    assert (schema["steps"]["minimum"], schema["steps"]["maximum"], schema["steps"]["default"]) == (1, 500, 20)
    assert schema["cfg_scale"]["default"] == GenerationParams.model_fields["cfg_scale"].default
