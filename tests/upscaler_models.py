"""Tiny random-weight upscalers built from spandrel's own architectures, written in the key layouts
people download: original ESRGAN (`model.0.weight`, …), Real-ESRGAN (`conv_first`, `body.N.rdbM`, …,
inside `params_ema`), Real-ESRGAN compact (`body.N`), SwinIR; as `.pth` and `.safetensors`."""
from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file


def _esrgan(scale: int, seed: int):
    from spandrel.architectures.ESRGAN import ESRGAN
    torch.manual_seed(seed)
    return ESRGAN(num_filters=16, num_blocks=1, scale=scale)


def _realesrgan_keys(state: dict[str, torch.Tensor], blocks: int) -> dict[str, torch.Tensor]:
    """Original ESRGAN keys → basicsr's RRDBNet keys (what Real-ESRGAN's releases use)."""
    out = {}
    ups = sorted({int(m.group(1)) for k in state if (m := re.match(r"model\.(\d+)\.", k)) and int(m.group(1)) >= 3})
    names = {0: "conv_first"}
    # model.3, model.6 (, model.9 …): upsampling convs; then the HR conv and the last conv
    conv_ups, tail = ups[:-2], ups[-2:]
    names.update({n: f"conv_up{i + 1}" for i, n in enumerate(conv_ups)})
    names.update({tail[0]: "conv_hr", tail[1]: "conv_last"})
    for key, value in state.items():
        if m := re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$", key):
            out[f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{m.group(4)}"] = value
        elif m := re.match(rf"model\.1\.sub\.{blocks}\.(weight|bias)$", key):
            out[f"conv_body.{m.group(1)}"] = value
        elif m := re.match(r"model\.(\d+)\.(weight|bias)$", key):
            out[f"{names[int(m.group(1))]}.{m.group(2)}"] = value
        else:
            raise KeyError(key)
    return out


def write_upscaler(kind: str, path: Path, scale: int = 4, seed: int = 0) -> Path:
    """kind: esrgan | realesrgan | compact | swinir."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "esrgan":
        state = _esrgan(scale, seed).state_dict()
    elif kind == "realesrgan":
        state = {"params_ema": _realesrgan_keys(_esrgan(scale, seed).state_dict(), 1)}
    elif kind == "compact":
        from spandrel.architectures.Compact import Compact
        torch.manual_seed(seed)
        state = Compact(num_feat=8, num_conv=2, upscale=scale).state_dict()
    elif kind == "swinir":
        from spandrel.architectures.SwinIR import SwinIR
        torch.manual_seed(seed)
        state = SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, mlp_ratio=2.0,
                       upscale=scale, upsampler="pixelshuffledirect").state_dict()
    else:
        raise ValueError(kind)
    flat = state.get("params_ema", state)
    last = [k for k in flat if k.endswith(".weight")][-1]  # random weights: keep the output mid-grey and
    flat[last] = flat[last] * 0.2                             # dependent on the input, not clipped to black
    flat[last.removesuffix("weight") + "bias"] = flat[last.removesuffix("weight") + "bias"] + 0.5
    if path.suffix == ".safetensors":
        flat = state.get("params_ema", state)
        save_file({k: v.contiguous() for k, v in flat.items()}, str(path))
    else:
        torch.save(state, str(path))
    return path
