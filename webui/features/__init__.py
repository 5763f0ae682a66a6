"""Easel's built-in features and scripts beyond the core, each on the extension points exactly as an
extension's would be: hires fix, styles, dynamic prompts, prompt travel's interpolation (features) and the
X/Y/Z plot (a script), ControlNet.

`register_features` adds them to a feature registry; it is given what they need to look up (the
checkpoint catalog, the VAE and style listings, the wildcards folder) rather than the services.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from webui.generation.extension_points import FeatureRegistry
from webui.models.controlnet import ControlNetLibrary
from webui.models.upscalers import UpscalerLibrary

from .controlnet import ControlNet
from .dynamic_prompts import DynamicPrompts
from .hires import HiresFix
from .sd_upscale import SdUpscale
from .styles import StyleLibrary, Styles
from .travel import PromptTravel
from .xyz import XyzPlot

__all__ = ["register_features", "StyleLibrary"]


def register_features(registry: FeatureRegistry, *, styles: StyleLibrary, wildcards: Path,
                      checkpoint_exists: Callable[[str], bool], checkpoint_titles: Callable[[], list[str]],
                      vae_exists: Callable[[str], bool], upscalers: UpscalerLibrary | None = None,
                      controlnets: ControlNetLibrary | None = None) -> FeatureRegistry:
    """Hires fix, styles, dynamic prompts, in that order after the core (styles apply before the dynamic
    syntax in them is expanded), ControlNet, and the scripts (SD upscale, the X/Y/Z plot)."""
    registry.add(HiresFix(checkpoint_exists, checkpoint_titles, upscalers))
    registry.add(Styles(styles))
    registry.add(DynamicPrompts(wildcards))
    registry.add(PromptTravel())  # active only in prompt-travel jobs, which carry its settings
    registry.add(ControlNet(controlnets))
    registry.add_script(SdUpscale(upscalers))
    registry.add_script(XyzPlot({"checkpoint": checkpoint_exists, "vae": vae_exists,
                                 "style": lambda name: styles.get(name) is not None}))
    return registry
