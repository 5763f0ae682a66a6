"""sd-webui-controlnet's own routes, as its clients (`webuiapi` among them) call them: `/controlnet/version`,
`/controlnet/model_list`, `/controlnet/module_list` and `POST /controlnet/detect`.

Units themselves travel in txt2img/img2img's `alwayson_scripts.controlnet.args` (webui/features/controlnet.py).
Detection needs no model and no GPU: it runs in a worker thread, not through the job queue, with the
pictures checked from their header before they are decoded like every other upload.
"""
# No `from __future__ import annotations`: FastAPI must see the route-local `CallerDep` type.
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from webui.errors import FieldError
from webui.features.controlnet import ControlNetUnit, detect, preview
from webui.features.preprocessors import PREPROCESSORS, find_preprocessor

from .context import ApiContext, Caller, caller_dependency
from .errors import EaselRoute
from .images import decode_image, encode_png

API_VERSION = 2  # the extension's API version its clients check
MAX_DETECT_IMAGES = 16
RESOLUTION_SLIDER = {"name": "Preprocessor Resolution", "value": 512, "min": 64, "max": 2048}


class DetectRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # the extension's clients send low_vram and friends

    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(min_length=1, max_length=MAX_DETECT_IMAGES)
    controlnet_masks: list[str] = Field(default_factory=list, max_length=MAX_DETECT_IMAGES)
    controlnet_processor_res: int = Field(512, ge=64, le=4096)
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1


class DetectResponse(BaseModel):
    images: list[str]
    info: str


def controlnet_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/controlnet", tags=["ControlNet (sd-webui-controlnet's API)"], route_class=EaselRoute)
    CallerDep = Annotated[Caller, Depends(caller_dependency(ctx))]
    library = ctx.easel.controlnets

    @router.get("/version")
    def version(caller: CallerDep) -> dict:
        return {"version": API_VERSION}

    @router.get("/model_list")
    def model_list(caller: CallerDep, update: bool = True) -> dict:
        """The ControlNets in models/ControlNet, as `name [hash8]` (what a unit's `model` takes)."""
        return {"model_list": library.titles()}

    @router.get("/module_list")
    def module_list(caller: CallerDep, alias_names: bool = False) -> dict:
        """The preprocessors with their sliders; `available: false` ones need annotator weights (`needs`)."""
        detail = {}
        for p in PREPROCESSORS.values():
            sliders = [RESOLUTION_SLIDER] if p.resolution else []
            sliders += [{"name": s.name, "value": s.value, "min": s.min, "max": s.max, "step": s.step}
                        for s in p.sliders]
            problem = p.problem(library.annotators)
            detail[p.name] = {"model_free": False, "sliders": sliders, "available": problem is None,
                              **({"needs": problem} if problem else {})}
        names = [(p.aliases[0] if alias_names and p.aliases else p.name) for p in PREPROCESSORS.values()]
        return {"module_list": names, "module_detail": detail}

    @router.post("/detect", response_model=DetectResponse)
    async def run_detect(body: DetectRequest, caller: CallerDep):  # type: ignore[valid-type]
        """The control maps of the pictures, as a unit with these settings would make them."""
        p = find_preprocessor(body.controlnet_module)
        if p is None:
            raise FieldError("controlnet_module", f"no module {body.controlnet_module!r} (GET /controlnet/module_list)")
        problem = p.problem(library.annotators)
        if problem:
            raise FieldError("controlnet_module", f"{p.name} needs {problem}")
        unit = ControlNetUnit(module=p.name, processor_res=body.controlnet_processor_res,
                              threshold_a=body.controlnet_threshold_a, threshold_b=body.controlnet_threshold_b)

        def work() -> list[str]:
            out = []
            for i, data in enumerate(body.controlnet_input_images):
                picture = np.asarray(decode_image(data, f"controlnet_input_images.{i}").convert("RGB"))
                mask = None
                if i < len(body.controlnet_masks) and body.controlnet_masks[i]:
                    m = decode_image(body.controlnet_masks[i], f"controlnet_masks.{i}").convert("L")
                    mask = np.asarray(m.resize((picture.shape[1], picture.shape[0])))
                try:
                    detected = detect(unit, picture, mask, (picture.shape[1], picture.shape[0]),
                                      annotators=library.annotators)
                except FieldError as e:  # the module's: its annotator could not be read
                    raise FieldError("controlnet_module", e.message) from None
                out.append(encode_png(preview(detected), None))
            return out
        return DetectResponse(images=await run_in_threadpool(work), info="Success")

    return router
