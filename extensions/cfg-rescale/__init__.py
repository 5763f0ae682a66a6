"""CFG Rescale: an example Easel extension, and a useful one.

Classifier-free guidance at high scales over-saturates ("burns") pictures, most visibly with
v-prediction checkpoints. Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed"
(2023), section 3.4, rescale the guided prediction to the spread of the conditional one and mix the
two by φ; diffusers ships that as `rescale_noise_cfg`, used here as it is.

What it shows of the extension interface:
- a `Feature` on one extension point (`guidance`), running after Easel's own CFG combination;
- settings described once (`Param`): the slider in txt2img and img2img, the infotext key
  `CFG Rescale phi` (written and read back on paste), and the API's
  `alwayson_scripts: {"cfg rescale": {"args": [0.7]}}` all come from `Settings`;
- `active()`: the feature stays out of jobs that leave φ at 0.
"""
from __future__ import annotations

from typing import Annotated

from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from pydantic import BaseModel, Field

from webui.extensions import ExtensionContext, Feature, Guidance, Param, Run, Step


class Settings(BaseModel):
    phi: Annotated[float, Field(ge=0.0, le=1.0, description="0 = plain CFG; 0.7 is the paper's suggestion"),
                   Param("CFG Rescale φ", infotext="CFG Rescale phi", step=0.05)] = 0.0


class CfgRescale(Feature):
    name = "cfg rescale"
    title = "CFG Rescale"
    settings = Settings

    def active(self, run: Run) -> bool:
        settings = run.settings_of(self)
        return settings is not None and settings.phi > 0

    def guidance(self, step: Step, guidance: Guidance) -> None:
        phi = step.run.settings_of(self).phi
        guidance.result = rescale_noise_cfg(guidance.result, guidance.cond, guidance_rescale=phi)


def register(ctx: ExtensionContext) -> None:
    ctx.add_feature(CfgRescale())
