"""The generation recipe inside an image file, whichever tool wrote it.

Three places are read, in this order:

- a PNG `parameters` text chunk: A1111's (and Easel's) infotext;
- the EXIF UserComment (tag 0x9286 in the Exif IFD) of a JPEG or WEBP: A1111 writes its infotext there with
  `piexif.helper.UserComment.dump(text, encoding="unicode")`, i.e. `b"UNICODE\\0"` + UTF-16 **big**-endian;
  other writers use the file's own byte order (little-endian), `b"ASCII\\0\\0\\0"` or `b"JIS\\0..."`; a GIF or
  JPEG `comment` is tried last;
- a ComfyUI PNG's `prompt` chunk (the API-format graph): the text encoders wired to the first KSampler's
  positive/negative inputs, its seed/steps/cfg/sampler, the checkpoint and LoRA loaders upstream of its model.
  The result is turned into an A1111 infotext, so the gallery and PNG Info handle one format.

Nothing here raises on odd metadata: what cannot be read is simply absent.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from webui.images.infotext import create_infotext, parse_infotext

log = logging.getLogger(__name__)

EXIF_IFD = 0x8769
USER_COMMENT = 0x9286
_PREFIX_SIZE = 8


@dataclass(frozen=True)
class ImageMetadata:
    """What an image file says about how it was made."""

    infotext: str | None  # A1111 format (synthesised for ComfyUI graphs)
    parameters: dict[str, Any] = field(default_factory=dict)  # parse_infotext's keys; {} when there is none
    source: str = "none"  # "parameters" (PNG chunk), "exif", "comment", "comfyui" or "none"


def read_image_metadata(image: Image.Image | Path | str) -> ImageMetadata:
    """The infotext of an open image or an image file; never raises for missing or malformed metadata
    (a file that is not an image at all raises Pillow's error when given as a path)."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return read_image_metadata(opened)
    text = _text_chunk(image, "parameters")
    if text:
        return ImageMetadata(text, parse_infotext(text), "parameters")
    text = _exif_user_comment(image)
    if text:
        return ImageMetadata(text, parse_infotext(text), "exif")
    graph = _text_chunk(image, "prompt")
    if graph:
        params = comfyui_parameters(graph)
        if params is not None:
            prompt, negative = params.pop("Prompt", ""), params.pop("Negative prompt", "")
            params.setdefault("Size", f"{image.width}x{image.height}")
            text = create_infotext(prompt, negative, params)
            return ImageMetadata(text, parse_infotext(text), "comfyui")
    text = _text_chunk(image, "comment")
    if text and _looks_like_infotext(text):
        return ImageMetadata(text, parse_infotext(text), "comment")
    return ImageMetadata(None)


def _text_chunk(image: Image.Image, key: str) -> str | None:
    value = image.info.get(key)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value.strip("\x00") if isinstance(value, str) and value.strip() else None


def _looks_like_infotext(text: str) -> bool:
    return "Steps:" in text or "Seed:" in text or "Negative prompt:" in text


def _exif_user_comment(image: Image.Image) -> str | None:
    try:
        raw = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    except Exception:  # Pillow raises several kinds of errors on broken EXIF blocks; a broken block is no text
        log.debug("unreadable EXIF in %s", getattr(image, "filename", "an image"), exc_info=True)
        return None
    if isinstance(raw, str):
        return raw.strip("\x00 ") or None
    if not isinstance(raw, (bytes, bytearray)):
        return None
    return decode_user_comment(bytes(raw))


def decode_user_comment(raw: bytes) -> str | None:
    """An EXIF UserComment's text: an 8-byte character-code prefix, then the text in that code.

    `UNICODE\\0` is UTF-16 whose byte order the standard leaves to the file; piexif (so A1111) writes big-endian,
    other tools little-endian, so a byte-order mark decides, else where the zero bytes of ASCII-range
    characters sit."""
    prefix, body = raw[:_PREFIX_SIZE], raw[_PREFIX_SIZE:]
    if prefix == b"UNICODE\x00":
        text = body.decode(_utf16_order(body), "replace")
    elif prefix == b"ASCII\x00\x00\x00":
        text = body.decode("ascii", "replace")
    elif prefix == b"JIS\x00\x00\x00\x00\x00":
        text = body.decode("shift_jis", "replace")
    elif prefix == b"\x00" * _PREFIX_SIZE:
        text = body.decode("utf-8", "replace")
    else:  # no prefix at all: some tools write bare UTF-8
        text = raw.decode("utf-8", "replace")
    text = text.lstrip("\ufeff").strip("\x00 ")
    return text or None


def _utf16_order(body: bytes) -> str:
    if body[:2] == b"\xfe\xff":
        return "utf-16-be"
    if body[:2] == b"\xff\xfe":
        return "utf-16-le"
    even_zeros = body[0::2].count(0)
    odd_zeros = body[1::2].count(0)
    return "utf-16-le" if odd_zeros > even_zeros else "utf-16-be"


# -- ComfyUI ------------------------------------------------------------------------------------------------
_SAMPLERS = {
    "euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "dpm_2": "DPM2", "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS", "dpm_fast": "DPM fast", "dpm_adaptive": "DPM adaptive", "dpmpp_2s_ancestral": "DPM++ 2S a",
    "dpmpp_sde": "DPM++ SDE", "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_sde": "DPM++ 2M SDE", "dpmpp_3m_sde": "DPM++ 3M SDE",
    "ddim": "DDIM", "uni_pc": "UniPC", "lcm": "LCM", "restart": "Restart",
}
_SCHEDULES = {"karras": "Karras", "exponential": "Exponential", "sgm_uniform": "SGM Uniform", "simple": "Simple",
              "ddim_uniform": "DDIM", "beta": "Beta", "normal": None}
_MAX_HOPS = 64  # a graph is small; this only stops a cycle in a hand-edited one


def comfyui_parameters(graph_json: str) -> dict[str, Any] | None:
    """A ComfyUI API-format graph (the PNG `prompt` chunk) → A1111 infotext fields, or None when it has no
    sampler. Follows links (`["node id", output]`) from the sampler's inputs upstream."""
    try:
        graph = json.loads(graph_json)
    except ValueError:
        return None
    if not isinstance(graph, dict):
        return None
    nodes = {str(k): v for k, v in graph.items() if isinstance(v, dict) and isinstance(v.get("inputs"), dict)}
    samplers = sorted((k for k, v in nodes.items() if "positive" in v["inputs"] and "model" in v["inputs"]),
                      key=_node_order)
    if not samplers:
        return None
    inputs = nodes[samplers[0]]["inputs"]
    params: dict[str, Any] = {
        "Prompt": ", ".join(_texts(nodes, inputs.get("positive"), "positive")),
        "Negative prompt": ", ".join(_texts(nodes, inputs.get("negative"), "negative")),
    }
    steps = _scalar(nodes, inputs.get("steps"), ("steps", "value", "int"))
    sampler = _scalar(nodes, inputs.get("sampler_name"), ("sampler_name", "value"))
    schedule = _scalar(nodes, inputs.get("scheduler"), ("scheduler", "value"))
    cfg = _scalar(nodes, inputs.get("cfg"), ("cfg", "value", "float"))
    seed = _scalar(nodes, inputs.get("seed", inputs.get("noise_seed")), ("seed", "noise_seed", "value", "int"))
    checkpoint, loras = _model_chain(nodes, inputs.get("model"))
    params.update({
        "Steps": steps, "Sampler": _SAMPLERS.get(str(sampler), sampler) if sampler is not None else None,
        "Schedule type": _SCHEDULES.get(str(schedule), schedule) if schedule is not None else None,
        "CFG scale": cfg, "Seed": seed, "Model": checkpoint,
        "Loras": ", ".join(loras) if loras else None,
    })
    return {k: v for k, v in params.items() if v is not None and v != "" or k in ("Prompt", "Negative prompt")}


def _node_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)


def _link(value: Any) -> str | None:
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)):
        return str(value[0])
    return None


def _scalar(nodes: dict[str, Any], value: Any, keys: tuple[str, ...], hops: int = 0) -> Any:
    """A widget value, following a link to a primitive/seed node that holds it."""
    target = _link(value)
    if target is None:
        return value if isinstance(value, (str, int, float)) else None
    node = nodes.get(target)
    if node is None or hops > _MAX_HOPS:
        return None
    for key in keys:
        if key in node["inputs"]:
            return _scalar(nodes, node["inputs"][key], keys, hops + 1)
    return None


def _texts(nodes: dict[str, Any], start: Any, side: str) -> list[str]:
    """The prompt texts feeding one conditioning input: text encoders found by walking conditioning links."""
    texts: list[str] = []
    seen: set[str] = set()
    pending = [start]
    while pending and len(seen) < _MAX_HOPS:
        target = _link(pending.pop(0))
        if target is None or target in seen or target not in nodes:
            continue
        seen.add(target)
        inputs = nodes[target]["inputs"]
        encoded = [_scalar(nodes, inputs[key], (key, "text", "string", "value"))
                   for key in ("text", "text_g", "text_l") if key in inputs]
        encoded = [t.strip() for t in encoded if isinstance(t, str) and t.strip()]
        if encoded:
            texts.extend(dict.fromkeys(encoded))  # SDXL encoders often repeat one text as text_g and text_l
            continue
        pending.extend(v for k, v in inputs.items() if k == side or k.startswith("conditioning"))
    return texts


def _model_chain(nodes: dict[str, Any], start: Any) -> tuple[str | None, list[str]]:
    """The checkpoint (or UNet) name at the top of a model link, and the LoRA loaders on the way."""
    loras: list[str] = []
    target = _link(start)
    for _ in range(_MAX_HOPS):
        node = nodes.get(target) if target is not None else None
        if node is None:
            break
        inputs = node["inputs"]
        lora = _scalar(nodes, inputs.get("lora_name"), ("lora_name", "value"))
        if isinstance(lora, str):
            loras.append(_stem(lora))
        for key in ("ckpt_name", "unet_name"):
            name = _scalar(nodes, inputs.get(key), (key, "value"))
            if isinstance(name, str):
                return _stem(name), loras
        target = _link(inputs.get("model"))
    return None, loras


def _stem(name: str) -> str:
    """`sub/dir/name.safetensors` → `name`, as A1111 names models and LoRAs."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    return stem if dot and ext.lower() in ("safetensors", "ckpt", "pt", "pth", "bin", "gguf", "sft") else base
