"""Where a loaded model runs and how fast: offloading, attention kernel, memory format, compilation.

One switch each, all set from the command line (`webui.settings`) and applied by `prepare()` when a
model becomes the active one (idempotent: applying twice changes nothing).

- **Offload** (`--medvram` = "model", `--lowvram` = "sequential", `--medvram-sdxl` = "model" for
  SDXL checkpoints only): accelerate's own hooks, the ones
  diffusers' `enable_model_cpu_offload` / `enable_sequential_cpu_offload` use. "model" keeps every
  component in RAM and moves the one that runs (text encoder(s) -> UNet -> VAE) to the device, the
  previous one back; "sequential" streams each layer's weights to the device for its forward only
  (slowest, least VRAM). Offloaded models never move as a whole: the manager leaves them in RAM.
- **Attention**: PyTorch SDPA (diffusers' default) or xformers (CUDA only; refused with a reason
  elsewhere).
- **channels-last** memory format for the UNet and VAE convolutions.
- **torch.compile** of the UNet (`nn.Module.compile`, in place, so `unet.config`, LoRA adapters and
  the rest keep working); the first generation at each new size pays the compilation.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

import torch
from accelerate import cpu_offload, cpu_offload_with_hook

log = logging.getLogger(__name__)
OFFLOAD_MODES = ("none", "model", "sequential")


@dataclass(frozen=True)
class SpeedOptions:
    offload: str = "none"  # "none" | "model" (--medvram) | "sequential" (--lowvram)
    offload_only_sdxl: bool = False  # --medvram-sdxl: offload SDXL checkpoints, keep the others on the device
    attention: str = "sdpa"  # "sdpa" | "xformers"
    channels_last: bool = False
    compile_unet: bool = False

    def __post_init__(self):
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(f"offload: expected one of {', '.join(OFFLOAD_MODES)} (got {self.offload!r})")
        if self.attention not in ("sdpa", "xformers"):
            raise ValueError(f"attention: expected sdpa or xformers (got {self.attention!r})")

    def offload_for(self, family: str) -> str:
        """The offload mode for a checkpoint of `family` ("sd1", "sd2", "sdxl")."""
        return "none" if self.offload_only_sdxl and family != "sdxl" else self.offload

    def offloads(self, family: str) -> bool:
        return self.offload_for(family) != "none"


def xformers_problem(device: torch.device) -> str | None:
    """Why xformers cannot be used on `device`, or None when it can."""
    if device.type != "cuda":
        return f"xformers needs CUDA and the device is {device.type}"
    if importlib.util.find_spec("xformers") is None:
        return "xformers is not installed (pip install xformers)"
    return None


def prepare(model, options: SpeedOptions) -> None:
    """Apply `options` to a model the manager has just made active (see the module docstring)."""
    applied: dict = model.speed_state
    offload = options.offload_for(model.family.name)
    if offload != "none":
        _offload(model, offload, applied)
    if options.attention == "xformers" and not applied.get("xformers"):
        problem = xformers_problem(model.device)
        if problem is None:
            for module in (model.unet, model.vae):
                module.enable_xformers_memory_efficient_attention()
            applied["xformers"] = True
    if options.channels_last and offload != "sequential":
        for module in (model.unet, model.vae):
            if applied.get(("channels_last", id(module))) is not module:
                module.to(memory_format=torch.channels_last)
                applied[("channels_last", id(module))] = module
    if options.compile_unet and not applied.get("compiled"):
        model.unet.compile()
        applied["compiled"] = True


def _offload(model, mode: str, applied: dict) -> None:
    """Hooks on each component not hooked yet (a VAE picked later gets its own on the next prepare)."""
    device = model.device
    components = [m for _, m in model.text_encoders] + [model.unet, model.vae]
    if mode == "sequential":
        for module in components:
            if applied.get(("offload", id(module))) is not module:
                cpu_offload(module, execution_device=device)
                applied[("offload", id(module))] = module
        return
    if all(applied.get(("offload", id(m))) is m for m in components):
        return
    for module in components:  # rebuild the chain: text encoder(s) -> UNet -> VAE -> (next job) text encoder
        if ("hook", id(module)) in applied:
            applied.pop(("hook", id(module))).remove()
    hooks = []
    for module in components:
        _, hook = cpu_offload_with_hook(module, execution_device=device, prev_module_hook=hooks[-1] if hooks else None)
        hooks.append(hook)
        applied[("offload", id(module))] = module
        applied[("hook", id(module))] = hook
    # close the ring: running the first text encoder puts the VAE of the previous job back in RAM
    hooks[0].hook.prev_module_hook = hooks[-1]
