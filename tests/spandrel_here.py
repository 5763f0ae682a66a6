"""Importing spandrel on this test machine, honestly.

spandrel imports torchvision when it is imported, but only its LaMa and RestoreFormer architectures
use it (`rotate`, `InterpolationMode`, `normalize`). On the CI machines there is no torchvision built
for the CPU torch (see README, "Upscalers"), so `import spandrel` fails there as it is. For the tests,
`import_spandrel()` imports it with a stand-in for exactly those three names placed in `sys.modules`
for the duration of the import, then takes the stand-in away again (so transformers and everything
else still see no torchvision). The architectures the tests run (ESRGAN, Real-ESRGAN, compact,
SwinIR) are spandrel's own code, untouched; LaMa and RestoreFormer would raise if called.

Easel's product code imports spandrel as it is (webui/models/upscalers.py) and says why when it cannot.
Where a real torchvision imports, it is used and nothing is stood in.
"""
from __future__ import annotations

import enum
import importlib
import sys
import types


class _InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


def _not_here(*args, **kwargs):
    raise NotImplementedError("torchvision stand-in for the tests: LaMa and RestoreFormer are not exercised")


def import_spandrel() -> bool:
    """Import spandrel (with the stand-in if needed); False if it cannot be imported even so."""
    try:
        importlib.import_module("spandrel")
        return True
    except Exception:
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]  # a half-imported mismatched torchvision
    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = _InterpolationMode
    functional.rotate = functional.normalize = _not_here
    root.transforms, transforms.functional = transforms, functional
    stand_in = {"torchvision": root, "torchvision.transforms": transforms,
                "torchvision.transforms.functional": functional}
    sys.modules.update(stand_in)
    try:
        importlib.import_module("spandrel")
        return True
    except Exception:
        return False
    finally:
        for name in stand_in:
            sys.modules.pop(name, None)
