"""The interface extensions use. Import from here, nothing deeper:

    from webui.extensions import ExtensionContext, Feature, Param

Generation hooks (see webui/generation/extension_points.py for what each point gets):
`Feature` with prepare / before_batch / unet_inputs / guidance / after_step / further_pass /
postprocess / before_save / after_save; `Script` for whole jobs. Settings are pydantic models whose
fields carry a `Param` (label, infotext key, widget), so the page, the API (`alwayson_scripts`) and
the infotext all come from one description. `ExtensionContext` registers features, scripts,
per-caller options, a UI tab and API routes. `extensions/cfg-rescale/` is a complete example.
"""
from webui.generation.errors import FieldError
from webui.generation.extension_points import (
    Batch,
    Feature,
    Guidance,
    Output,
    Run,
    Script,
    ScriptContext,
    Step,
    UnetCall,
)
from webui.generation.fields import Param
from webui.generation.latents import InitLatents
from webui.generation.result import GenerationResult
from webui.images.store import PendingSave, SavedImage

from .interface import ApiServices, ExtensionContext, UiServices

__all__ = [
    "ApiServices", "Batch", "ExtensionContext", "Feature", "FieldError", "GenerationResult", "Guidance", "InitLatents", "Output",
    "Param", "PendingSave", "Run", "SavedImage", "Script", "ScriptContext", "Step", "UiServices", "UnetCall",
]
