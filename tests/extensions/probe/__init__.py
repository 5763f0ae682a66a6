"""A test extension on every extension point, each with an effect a test can see in pixels or infotext."""
from __future__ import annotations

from typing import Annotated

import torch
from fastapi import APIRouter, Depends
from PIL import ImageOps
from pydantic import BaseModel, Field

from webui.extensions import (
    ApiServices, Batch, ExtensionContext, Feature, GenerationResult, Guidance, InitLatents, Output, Param,
    PendingSave, Run, SavedImage, Script, ScriptContext, Step, UiServices, UnetCall,
)


class ProbeSettings(BaseModel):
    enabled: Annotated[bool, Field(), Param("Enabled", infotext="Probe")] = True
    suffix: Annotated[str, Field(), Param("Prompt suffix", infotext="Probe suffix")] = ""
    noise_seed: Annotated[int, Field(ge=-1), Param("Noise from seed", infotext="Probe noise seed", ui="number")] = -1
    guidance_factor: Annotated[float, Field(ge=0, le=4), Param("Guidance factor", infotext="Probe guidance factor")] = 1.0
    second_pass: Annotated[float, Field(ge=0, le=1), Param("Second pass strength", infotext="Probe pass")] = 0.0
    invert: Annotated[bool, Field(), Param("Invert", infotext="Probe invert")] = False
    mark_saved: Annotated[bool, Field(), Param("Mark saved files", infotext="Probe mark")] = False


class Probe(Feature):
    name = "probe"
    title = "Probe (test extension)"
    settings = ProbeSettings

    def __init__(self) -> None:
        self.saved: list[tuple[str, str | None, str]] = []  # (path, owner, kind) from after_save

    def prepare(self, run: Run) -> None:
        s = run.settings_of(self)
        run.state[self.name] = {"unet": 0, "steps": 0, "contexts": []}
        if s.suffix:
            run.prompts = [p + s.suffix for p in run.prompts]
        run.infotext["Probe label"] = run.options.get("probe_label", "")

    def before_batch(self, run: Run, batch: Batch) -> None:
        seed = run.settings_of(self).noise_seed
        if seed >= 0:
            shape = batch.noise.shape[1:]
            batch.noise = torch.cat([torch.randn((1, *shape), generator=torch.Generator().manual_seed(seed + i))
                                     for i in range(len(batch.seeds))]).to(batch.noise.device)

    def unet_inputs(self, step: Step, call: UnetCall) -> None:
        state = step.run.state[self.name]
        state["unet"] += 1
        state["contexts"].append((step.pass_name, step.number, call.context.detach().clone()))

    def guidance(self, step: Step, guidance: Guidance) -> None:
        factor = step.run.settings_of(self).guidance_factor
        if factor != 1.0:
            guidance.result = guidance.uncond + factor * guidance.scale * (guidance.cond - guidance.uncond)

    def after_step(self, step: Step, latents: torch.Tensor) -> torch.Tensor | None:
        step.run.state[self.name]["steps"] += 1
        return None

    def pass_steps(self, run: Run) -> int:
        strength = run.settings_of(self).second_pass
        return max(1, int(run.request.steps * strength)) if strength > 0 else 0

    def further_pass(self, run: Run, batch: Batch, latents: torch.Tensor) -> torch.Tensor | None:
        strength = run.settings_of(self).second_pass
        if strength <= 0:
            return None
        return run.sample(batch, InitLatents(latents, strength), pass_name="probe")

    def postprocess(self, run: Run, batch: Batch, outputs: list[Output]) -> None:
        state = run.state[self.name]
        for out in outputs:
            if run.settings_of(self).invert:
                out.image = ImageOps.invert(out.image.convert("RGB"))
            out.params["Probe UNet calls"] = state["unet"]
            out.params["Probe steps"] = state["steps"]

    def before_save(self, pending: PendingSave) -> None:
        if pending.infotext and "Probe mark: True" in pending.infotext:
            pending.infotext += ", Probe saved: yes"

    def after_save(self, saved: SavedImage) -> None:
        self.saved.append((str(saved.path), saved.owner, saved.kind))


class PairSettings(BaseModel):
    offset: Annotated[int, Field(ge=1, le=1000), Param("Second seed offset")] = 7


class ProbePair(Script):
    """Two generations: the request's seed and seed + offset, as one result."""

    name = "probe pair"
    settings = PairSettings

    def run(self, context: ScriptContext, request, settings: PairSettings) -> GenerationResult:
        first = context.generate(request)
        second = context.generate(request.model_copy(update={"seed": first.seeds[0] + settings.offset}))
        for field in ("images", "infotexts", "seeds", "subseeds", "prompts", "negative_prompts"):
            getattr(first, field).extend(getattr(second, field))
        return first


PROBE = Probe()


def build_tab(services: UiServices) -> None:
    import gradio as gr

    gr.Markdown("The probe extension's own tab.", elem_id="probe_tab_text")


def build_api(services: ApiServices) -> APIRouter:
    router = APIRouter(prefix="/easel/v1/ext/probe", route_class=services.route_class)

    @router.get("/saved")
    def saved(caller=Depends(services.caller)) -> dict:
        return {"caller": caller.owner, "saved": [list(s) for s in PROBE.saved]}

    return router


def register(ctx: ExtensionContext) -> None:
    ctx.add_feature(PROBE)
    ctx.add_script(ProbePair())
    ctx.add_option("probe_label", str, "plain", "a label the probe writes into the infotext")
    ctx.add_tab("Probe", build_tab)
    ctx.add_api(build_api)
