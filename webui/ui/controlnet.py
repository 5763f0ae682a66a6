"""The ControlNet accordion of txt2img and img2img: unit tabs as in sd-webui-controlnet, each with its picture
(empty in img2img: the img2img input), an optional mask, preprocessor and model, weight, guidance window,
resize and control modes, the hires option, and a preview of the detected map.

A thin skin: the widgets' values become the feature's settings (`{"args": [unit, …]}`, exactly what the
API takes) and admission checks them as it checks an API request; the preview calls the feature's own
`detect`. The threshold sliders take the chosen module's names, ranges and defaults.
"""
from __future__ import annotations

import functools
from typing import Any

import gradio as gr
import numpy as np

from webui.errors import FieldError
from webui.features.controlnet import (CONTROL_MODES, HR_OPTIONS, NAME, RESIZE_MODES, ControlNet, ControlNetUnit,
                                       detect, preview)
from webui.features.preprocessors import PREPROCESSORS, find_preprocessor
from webui.models.annotators import Annotators

from .controls import FeatureSection, GenerationControls, icon_button

UNITS = 3  # the extension's default number of unit tabs
FIELDS = ("enabled", "pixel_perfect", "image", "mask", "module", "model", "weight", "processor_res", "threshold_a",
          "threshold_b", "guidance_start", "guidance_end", "control_mode", "resize_mode", "hr_option")


def threshold_updates(module: str, defaults: bool = False) -> tuple[Any, Any, Any]:
    """The resolution and threshold sliders for a module: its names and ranges (and with `defaults` its
    default values: when a person picks it, not when a pasted infotext sets it); hidden if unused."""
    p = find_preprocessor(module)
    res = gr.Slider(visible=bool(p and p.resolution))
    sliders = list(p.sliders) if p else []
    out = []
    for i in range(2):
        if i < len(sliders):
            s = sliders[i]
            value = {"value": s.value} if defaults else {}
            out.append(gr.Slider(label=s.name, minimum=s.min, maximum=s.max, step=s.step, visible=True, **value))
        else:
            out.append(gr.Slider(visible=False))
    return res, out[0], out[1]


class ControlNetSection(FeatureSection):
    """The units' widgets, keyed `"N.field"`; their values make the feature's `{"args": [...]}`."""

    def value(self, data: dict) -> Any:
        units = []
        for i in range(self.units):
            unit = {name: data.get(self.widgets[f"{i}.{name}"]) for name in FIELDS}
            units.append({k: v for k, v in unit.items() if v is not None})
        return {"args": units}

    def updates(self, given: dict[str, Any]) -> dict:
        units = given.get("args", [])
        if not units:
            return {}
        out = {}
        for i in range(self.units):
            unit = units[i] if i < len(units) else {"enabled": False}
            out.update({self.widgets[f"{i}.{k}"]: v for k, v in unit.items()
                        if f"{i}.{k}" in self.widgets and k not in ("image", "mask")})
        return out

    @property
    def units(self) -> int:
        return sum(1 for key in self.widgets if key.endswith(".enabled"))


def controlnet_section(controls: GenerationControls, tab: str) -> None:
    """The accordion, when the ControlNet feature is there; its section joins the tab's others."""
    feature = controls.easel.features.find(NAME)
    if not isinstance(feature, ControlNet):
        return
    library = controls.easel.controlnets
    prefix = f"{controls.prefix}_controlnet"
    def modules() -> list[str]:
        return [p.name for p in PREPROCESSORS.values() if p.problem(library.annotators) is None]
    unavailable = ", ".join(p.name for p in PREPROCESSORS.values() if p.problem(library.annotators))
    default = ControlNetUnit()
    widgets: dict[str, Any] = {}
    with gr.Accordion("ControlNet", open=False, elem_id=prefix):
        gr.Markdown(f"Models: `models/ControlNet`. Preprocessors that need annotator weights not present here "
                    f"({unavailable}) are not listed; see the README.", elem_classes=["easel-hint"])
        for i in range(UNITS):
            u = f"{prefix}_{i}"
            with gr.Tab(f"ControlNet Unit {i}", elem_id=f"{u}_tab"):
                with gr.Row():
                    image = gr.Image(type="pil", label="Control image" + (" (empty: the img2img input)"
                                                                           if tab == "img2img" else ""),
                                     sources=["upload", "clipboard"], elem_id=f"{u}_image", height=220)
                    shown = gr.Image(type="pil", label="Preprocessor preview", interactive=False,
                                     elem_id=f"{u}_preview", height=220)
                with gr.Accordion("Mask (optional: white = repaint, for inpaint_only)", open=False):
                    mask = gr.Image(type="pil", image_mode="L", sources=["upload", "clipboard"], elem_id=f"{u}_mask",
                                    label="Mask", height=160)
                with gr.Row():
                    enabled = gr.Checkbox(label="Enable", value=False, elem_id=f"{u}_enabled")
                    pixel_perfect = gr.Checkbox(label="Pixel Perfect", value=default.pixel_perfect,
                                                elem_id=f"{u}_pixel_perfect")
                    run_preview = gr.Button("Preview", size="sm", elem_id=f"{u}_run_preview")
                with gr.Row():
                    module = gr.Dropdown(modules(), value=default.module, label="Preprocessor", elem_id=f"{u}_module")
                    model = gr.Dropdown(["None", *library.titles()], value="None", label="Model",
                                        elem_id=f"{u}_model", allow_custom_value=True)
                    refresh = icon_button("refresh", f"{u}_refresh_models")
                weight = gr.Slider(0.0, 2.0, value=default.weight, step=0.05, label="Control Weight",
                                   elem_id=f"{u}_weight")
                with gr.Row():
                    start = gr.Slider(0.0, 1.0, value=default.guidance_start, step=0.01, label="Starting Control Step",
                                      elem_id=f"{u}_guidance_start")
                    end = gr.Slider(0.0, 1.0, value=default.guidance_end, step=0.01, label="Ending Control Step",
                                    elem_id=f"{u}_guidance_end")
                res, a, b = (gr.Slider(64, 2048, value=512, step=8, label="Preprocessor Resolution",
                                       elem_id=f"{u}_processor_res", visible=False),
                             gr.Slider(0, 1, value=0, label="Threshold A", elem_id=f"{u}_threshold_a", visible=False),
                             gr.Slider(0, 1, value=0, label="Threshold B", elem_id=f"{u}_threshold_b", visible=False))
                control_mode = gr.Radio(list(CONTROL_MODES), value=default.control_mode, label="Control Mode",
                                        elem_id=f"{u}_control_mode")
                resize_mode = gr.Radio(list(RESIZE_MODES), value=default.resize_mode, label="Resize Mode",
                                       elem_id=f"{u}_resize_mode")
                hr_option = gr.Radio(list(HR_OPTIONS), value=default.hr_option, label="Hires-Fix Option",
                                     elem_id=f"{u}_hr_option", visible=tab == "txt2img")
            module.change(threshold_updates, inputs=module, outputs=[res, a, b], api_name=False)
            module.input(lambda m: threshold_updates(m, defaults=True), inputs=module, outputs=[res, a, b],
                         api_name=False)
            refresh.click(lambda: (gr.Dropdown(choices=["None", *library.titles()]), gr.Dropdown(choices=modules())),
                          inputs=None, outputs=[model, module], api_name=False)
            run_preview.click(functools.partial(preview_map, library.annotators), inputs=[image, mask, module, res, a, b, pixel_perfect, resize_mode,
                                                   controls.fields["width"], controls.fields["height"]],
                              outputs=shown, api_name=False)
            values = dict(enabled=enabled, pixel_perfect=pixel_perfect, image=image, mask=mask, module=module,
                          model=model, weight=weight, processor_res=res, threshold_a=a, threshold_b=b,
                          guidance_start=start, guidance_end=end, control_mode=control_mode, resize_mode=resize_mode,
                          hr_option=hr_option)
            widgets.update({f"{i}.{name}": w for name, w in values.items()})
    controls.sections.append(ControlNetSection(feature, widgets))


def preview_map(annotators: Annotators, image, mask, module: str, res: float, a: float, b: float, pixel_perfect: bool, resize_mode: str,
                width: float, height: float):
    """The detected map of a unit's picture, as generation would make it."""
    if image is None:
        raise gr.Error("Drop a control image into the unit first.")
    try:
        unit = ControlNetUnit(module=module, processor_res=int(res), threshold_a=a, threshold_b=b,
                              pixel_perfect=bool(pixel_perfect), resize_mode=resize_mode)
        picture = np.asarray(image.convert("RGB"))
        m = np.asarray(mask.convert("L").resize(image.size)) if mask is not None else None
        return preview(detect(unit, picture, m, (int(width or 512), int(height or 512)), annotators=annotators))
    except (FieldError, ValueError) as e:
        raise gr.Error(str(e)) from None
