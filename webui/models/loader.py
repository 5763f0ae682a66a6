"""Turning a checkpoint on disk into the diffusers components Easel runs.

Single files in the original layout are converted with diffusers' own converters
(`diffusers.loaders.single_file_utils`), fed with an original config that `families` infers from
the tensors; diffusers folders load with `from_pretrained(local_files_only=True)`. Either way the
model is built on the meta device and the weights are *assigned*, not copied, so a load costs about
one read of the file. Nothing here touches the network: configs and the tokenizer are Easel's own.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
    create_unet_diffusers_config_from_ldm,
    create_vae_diffusers_config_from_ldm,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
from transformers.initialization import no_init_weights

from .catalog import CheckpointInfo
from .checkpoint_io import read_safetensors_keys, read_safetensors_metadata, read_state_dict
from .errors import ModelError
from .families import (
    OPENCLIP_PREFIX, XL_CLIP_PREFIX, XL_OPENCLIP_PREFIX, ModelFamily, detect_family, exact_widths,
    normalise_keys, openclip_layers, sdxl_embedding_config, text_encoder_config,
)
from .tokenizers import load_clip_tokenizer

log = logging.getLogger(__name__)
CONFIGS = Path(__file__).resolve().parent / "configs"
CONFIG_DIRS = {"sd1": CONFIGS / "sd15", "sd2": CONFIGS / "sd2", "sdxl": CONFIGS / "sdxl"}
# SD2's and SDXL's second tokenizer pad with "!" (id 0), as OpenCLIP does; SD1's with <|endoftext|>
OPENCLIP_PAD = "!"


@dataclass
class LoadedModel:
    """A checkpoint ready to run: its components, on one device, in one dtype."""

    info: CheckpointInfo
    family: ModelFamily
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    default_size: tuple[int, int] = (512, 512)
    metadata: dict[str, str] = field(default_factory=dict)
    own_vae: AutoencoderKL | None = None  # the checkpoint's VAE while another one is selected
    vae_file: object | None = None  # the models/VAE file in use (None = the checkpoint's own)
    loras: dict = field(default_factory=dict)  # LoRA name -> file, injected as peft adapters
    text_encoder_2: CLIPTextModelWithProjection | None = None  # SDXL's OpenCLIP bigG
    tokenizer_2: CLIPTokenizer | None = None
    speed_state: dict = field(default_factory=dict, repr=False)  # what webui.models.speed applied
    stamp: tuple | None = None  # the files' sizes and times when loaded (a change on disk means reload)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def text_encoders(self) -> list[tuple[str, torch.nn.Module]]:
        """(diffusers' LoRA prefix, module) for each text encoder."""
        out = [("text_encoder", self.text_encoder)]
        if self.text_encoder_2 is not None:
            out.append(("text_encoder_2", self.text_encoder_2))
        return out

    def modules(self) -> list[torch.nn.Module]:
        extra = [self.own_vae] if self.own_vae is not None and self.own_vae is not self.vae else []
        return [self.unet, self.vae, *(m for _, m in self.text_encoders), *extra]


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _assign(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, filename: str) -> None:
    """Load `state` into a meta-initialised module by assignment; every parameter must be present."""
    names = _check_state(module, state, what, filename)
    module.load_state_dict({k: state[k] for k in names}, strict=True, assign=True)


def _match_text_encoder_keys(state: dict[str, torch.Tensor], module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """transformers 5's CLIPTextModel has no `text_model.` level; older layouts do. Match the module
    (keys the module does not have, such as the OpenCLIP layer SD2 never uses, are left out)."""
    own = set(module.state_dict())
    out = {}
    for k, v in state.items():
        if k not in own and k.startswith("text_model.") and k[len("text_model."):] in own:
            k = k[len("text_model."):]
        if k in own:
            out[k] = v
    return out


def _size_from_metadata(meta: dict[str, str], fallback: tuple[int, int]) -> tuple[int, int]:
    """`modelspec.resolution` ("512x512"), the metadata kohya and Stability write, gives the trained size."""
    try:
        w, h = (int(v) for v in meta["modelspec.resolution"].lower().split("x"))
        return (w, h) if w > 0 and h > 0 else fallback
    except (KeyError, ValueError):
        return fallback


def default_size_unloaded(info: CheckpointInfo) -> tuple[int, int]:
    """A checkpoint's trained size from its header alone: `modelspec.resolution`, else its family's
    (SDXL, told by its tensor names or folder layout: 1024; others 512)."""
    if info.is_diffusers_folder:
        return (1024, 1024) if (info.path / "text_encoder_2").is_dir() else (512, 512)
    if info.path.suffix != ".safetensors":
        return (512, 512)
    xl = f"{XL_OPENCLIP_PREFIX}positional_embedding" in read_safetensors_keys(info.path)
    return _size_from_metadata(read_safetensors_metadata(info.path), (1024, 1024) if xl else (512, 512))


def family_default_size(family: ModelFamily) -> tuple[int, int]:
    if family.name == "sdxl":
        return (1024, 1024)
    if family.name == "sd2" and family.prediction_type == "v_prediction":
        return (768, 768)
    return (512, 512)


def read_yaml_override(info: CheckpointInfo) -> dict | None:
    """`<name>.yaml` beside a checkpoint (A1111's convention), or None. Parsed safely (no tags)."""
    candidate = info.config_yaml
    if candidate is None:
        return None
    try:
        data = yaml.safe_load(candidate.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ModelError(f"{candidate.name}: not a readable YAML config ({type(e).__name__})") from e
    if not isinstance(data, dict):
        raise ModelError(f"{candidate.name}: not an LDM config (expected a mapping with model.params)")
    return data


@dataclass
class _TextEncoderPlan:
    cls: type
    config: dict
    state: dict[str, torch.Tensor]
    what: str


def _text_encoder_plans(sd: dict[str, torch.Tensor], family: ModelFamily) -> list[_TextEncoderPlan]:
    """The text encoder(s) in transformers' layout, each with its config sized from the tensors."""
    configs = CONFIG_DIRS[family.name]
    if family.name == "sd1":
        state = convert_ldm_clip_checkpoint(sd)
        return [_TextEncoderPlan(CLIPTextModel, text_encoder_config(state, _json(configs / "text_encoder" / "config.json")),
                                 state, "text encoder")]
    if family.name == "sd2":
        width = sd[f"{OPENCLIP_PREFIX}token_embedding.weight"].shape[1]
        state = convert_open_clip_checkpoint(SimpleNamespace(config=SimpleNamespace(hidden_size=width)), sd,
                                             prefix=OPENCLIP_PREFIX)
        # SD2 conditions on the penultimate layer: the last one is left out, as in diffusers' SD2 folders
        layers = openclip_layers(sd, OPENCLIP_PREFIX) - 1
        if layers < 1:
            raise ModelError("the OpenCLIP text encoder has fewer than 2 layers")
        cfg = text_encoder_config(state, _json(configs / "text_encoder" / "config.json"), layers=layers)
        return [_TextEncoderPlan(CLIPTextModel, cfg, state, "text encoder")]
    first = convert_ldm_clip_checkpoint(sd, XL_CLIP_PREFIX)
    first = {k: v for k, v in first.items() if not k.startswith("conditioner.")}
    width = sd[f"{XL_OPENCLIP_PREFIX}positional_embedding"].shape[1]
    second = convert_open_clip_checkpoint(SimpleNamespace(config=SimpleNamespace(hidden_size=width)), sd,
                                          prefix=XL_OPENCLIP_PREFIX)
    return [
        _TextEncoderPlan(CLIPTextModel, text_encoder_config(first, _json(configs / "text_encoder" / "config.json")),
                         first, "first text encoder"),
        _TextEncoderPlan(CLIPTextModelWithProjection,
                         text_encoder_config(second, _json(configs / "text_encoder_2" / "config.json")),
                         second, "second text encoder"),
    ]


def _cast(state: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def _same_config(config, wanted: dict) -> bool:
    def norm(v):
        return [norm(x) for x in v] if isinstance(v, (list, tuple)) else v
    return all(norm(config.get(k)) == norm(v) for k, v in wanted.items())


def _reusable_modules(reuse: LoadedModel | None, family: ModelFamily, unet_cfg: dict, vae_cfg: dict,
                      plans: list[_TextEncoderPlan], dtype: torch.dtype) -> list[torch.nn.Module] | None:
    """The modules of a model that is about to be dropped, when they have exactly the architecture
    this checkpoint needs (then only the weights change hands: no module is built)."""
    if reuse is None or reuse.family.name != family.name or reuse.loras or reuse.dtype != dtype:
        return None
    vae = reuse.own_vae if reuse.own_vae is not None else reuse.vae
    encoders = [m for _, m in reuse.text_encoders]
    if len(encoders) != len(plans) or any(next(m.parameters()).is_meta for m in (reuse.unet, vae, *encoders)):
        return None  # --lowvram keeps weights outside the modules: nothing to reuse
    if not (_same_config(reuse.unet.config, unet_cfg) and _same_config(vae.config, vae_cfg)):
        return None
    if any(type(m) is not plan.cls or not _same_config(m.config.to_dict(), plan.config)
           for m, plan in zip(encoders, plans)):
        return None
    return [reuse.unet, vae, *encoders]


def _check_state(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, filename: str) -> list[str]:
    """Every tensor `module` holds is in `state`, with its shape (raises ModelError otherwise); returns their names."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise ModelError(
            f"{filename}: the {what} weights do not match its layout ({len(missing)} missing, e.g. {missing[0]})"
        )
    bad = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise ModelError(
            f"{filename}: the {what} tensor {k} has shape {tuple(state[k].shape)}, expected {tuple(expected[k].shape)}"
        )
    return list(expected)


def _swap_weights(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Point an existing module's parameters and buffers at new tensors (shapes already checked)."""
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if name in state:
            tensor.data = state[name]


def load_single_file(info: CheckpointInfo, device: torch.device, dtype: torch.dtype,
                     reuse: LoadedModel | None = None) -> LoadedModel:
    sd = normalise_keys(read_state_dict(info.path))
    meta = read_safetensors_metadata(info.path) if info.path.suffix == ".safetensors" else {}
    family = detect_family(sd, info.path.name, meta, read_yaml_override(info))
    cfg = family.original_config
    try:
        params = cfg["model"]["params"]
        unet_params = params["unet_config"]["params"]
        unet_cfg = exact_widths(create_unet_diffusers_config_from_ldm(cfg, sd), unet_params)
        if family.name == "sdxl":
            unet_cfg.update(sdxl_embedding_config(sd, unet_params))
        if family.name == "sd2":
            unet_cfg["upcast_attention"] = True  # as diffusers' SD2.1 config (fp16 attention overflows otherwise)
        vae_cfg = exact_widths(create_vae_diffusers_config_from_ldm(cfg, sd),
                               params["first_stage_config"]["params"]["ddconfig"])
        unet_sd = convert_ldm_unet_checkpoint(sd, unet_cfg)
        vae_sd = convert_ldm_vae_checkpoint(sd, vae_cfg)
        plans = _text_encoder_plans(sd, family)
    except ModelError as e:
        raise ModelError(f"{info.path.name}: {e}") from e
    except (KeyError, IndexError, ValueError, RuntimeError) as e:
        raise ModelError(f"{info.path.name}: unknown layout; could not convert it ({type(e).__name__}: {e})") from e
    del sd
    reused = _reusable_modules(reuse, family, unet_cfg, vae_cfg, plans, dtype)
    if reused is not None:  # weights-only swap: the architecture matches a model being dropped
        unet, vae, *encoders = reused
        states = [_cast(unet_sd, dtype), _cast(vae_sd, dtype),
                  *(_cast(_match_text_encoder_keys(p.state, m), dtype) for p, m in zip(plans, encoders))]
        whats = ["UNet", "VAE", *(p.what for p in plans)]
        for module, state, what in zip(reused, states, whats):  # check everything before changing anything
            _check_state(module, state, what, info.path.name)
        for module, state in zip(reused, states):
            _swap_weights(module, state)
        log.info("%s: weights-only swap into the modules of %s", info.path.name, reuse.info.name)
    else:
        with init_empty_weights(), no_init_weights():  # every weight is assigned below: skip random init
            unet = UNet2DConditionModel.from_config(unet_cfg)
            vae = AutoencoderKL.from_config(vae_cfg)
            encoders = [plan.cls(CLIPTextConfig(**plan.config)) for plan in plans]
        _assign(unet, _cast(unet_sd, dtype), "UNet", info.path.name)
        _assign(vae, _cast(vae_sd, dtype), "VAE", info.path.name)
        for plan, module in zip(plans, encoders):
            _assign(module, _cast(_match_text_encoder_keys(plan.state, module), dtype), plan.what, info.path.name)
    sched = _json(CONFIG_DIRS[family.name] / "scheduler" / "scheduler_config.json")
    model = LoadedModel(
        info=info, family=family, unet=unet, vae=vae, text_encoder=encoders[0],
        tokenizer=load_clip_tokenizer(OPENCLIP_PAD if family.name == "sd2" else None),
        scheduler_config=sched, device=device, dtype=dtype, metadata=meta,
        text_encoder_2=encoders[1] if len(encoders) > 1 else None,
        tokenizer_2=load_clip_tokenizer(OPENCLIP_PAD) if len(encoders) > 1 else None,
    )
    if reused is not None:  # the modules are in eval mode without gradients already
        if reuse.device != device:  # the new weights are on `device`; move what was not replaced
            for m in reused:
                m.to(device)
        model.speed_state = {"compiled": True} if reuse.speed_state.get("compiled") else {}
    else:
        model = _finish(model)
    if not family.prediction_type:
        v = predicts_v(model.unet)
        model.family = dataclasses.replace(family, prediction_type="v_prediction" if v else "epsilon")
        log.info("%s: no prediction type given; the UNet probe says %s", info.path.name, model.family.prediction_type)
    model.scheduler_config["prediction_type"] = model.family.prediction_type
    model.default_size = _size_from_metadata(meta, family_default_size(model.family))
    return model


@torch.no_grad()
def predicts_v(unet: UNet2DConditionModel) -> bool:
    """Whether an SD2 UNet was trained for v-prediction, judged as A1111 does: at t=999 the input is
    almost pure noise, so an epsilon model predicts roughly its input while a v model predicts
    about -x0, far below it."""
    p = next(unet.parameters())
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, device=p.device, dtype=p.dtype)
    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, device=p.device, dtype=p.dtype)
    t = torch.tensor([999], device=p.device)
    out = unet(x, t, encoder_hidden_states=context).sample.float()
    return bool((out - x[:, : out.shape[1]].float()).mean() < -1)


def _own_memory(module: torch.nn.Module) -> None:
    """Copy weights that may still be mapped from their files into the model's own memory, so a file
    changed or truncated on disk while the model is loaded cannot reach it (checkpoint_io does the same
    for single files)."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.data = tensor.data.clone()


def load_diffusers_folder(info: CheckpointInfo, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    root = info.path
    common = {"local_files_only": True, "torch_dtype": dtype}
    xl = (root / "text_encoder_2").is_dir()
    try:
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", **common)
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", **common)
        text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder", local_files_only=True, dtype=dtype)
        sd2 = not xl and text_encoder.config.hidden_act == "gelu"  # OpenCLIP; OpenAI CLIP uses quick_gelu
        tokenizer = _folder_tokenizer(root / "tokenizer", OPENCLIP_PAD if sd2 else None)
        text_encoder_2 = tokenizer_2 = None
        if xl:
            text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
                root / "text_encoder_2", local_files_only=True, dtype=dtype)
            tokenizer_2 = _folder_tokenizer(root / "tokenizer_2", OPENCLIP_PAD)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelError(f"{info.name}: not a loadable diffusers folder ({type(e).__name__}: {e})") from e
    for module in (unet, vae, text_encoder, text_encoder_2):
        if module is not None:
            _own_memory(module)
    name = "sdxl" if xl else "sd2" if sd2 else "sd1"
    sched_file = root / "scheduler" / "scheduler_config.json"
    sched = _json(sched_file if sched_file.is_file() else CONFIG_DIRS[name] / "scheduler" / "scheduler_config.json")
    family = ModelFamily(
        name=name, inpainting=unet.config.in_channels == 9,
        prediction_type=sched.get("prediction_type", "epsilon"), original_config={}, prediction_source="config",
    )
    size = unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    largest = family_default_size(family)
    return _finish(LoadedModel(
        info=info, family=family, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler_config=sched, device=device, dtype=dtype,
        default_size=largest if size >= largest[0] else (size, size),
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
    ))


def _folder_tokenizer(folder: Path, pad: str | None) -> CLIPTokenizer:
    """The folder's own tokenizer when it has one; Easel's shipped one otherwise."""
    if (folder / "vocab.json").is_file():
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    return load_clip_tokenizer(pad)


def _finish(model: LoadedModel) -> LoadedModel:
    for m in model.modules():
        m.to(model.device)
        m.eval()
        m.requires_grad_(False)
    return model


def load_checkpoint(info: CheckpointInfo, device: torch.device, dtype: torch.dtype,
                    reuse: LoadedModel | None = None) -> LoadedModel:
    """Load any supported checkpoint; raises ModelError naming the file and the reason.

    `reuse`: a model the caller is about to drop. A single file of the same architecture takes
    over its modules (weights-only swap); `reuse` must not be used afterwards either way."""
    if info.is_diffusers_folder:
        return load_diffusers_folder(info, device, dtype)
    return load_single_file(info, device, dtype, reuse)
