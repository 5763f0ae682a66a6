"""Easel: a self-hosted Stable Diffusion web UI that speaks AUTOMATIC1111's dialect.

Importing the package switches the Hugging Face libraries to offline mode before any of them is
imported: Easel ships every config and tokenizer it needs and loads checkpoints from disk only, so
no code path may reach a hub, not even by accident in a script or a test.
"""
import os as _os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "DIFFUSERS_OFFLINE"):
    _os.environ[_var] = "1"
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
_os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
_os.environ.setdefault("DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
