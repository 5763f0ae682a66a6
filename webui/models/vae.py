"""Standalone VAEs from `models/VAE/` and A1111's choice of which VAE a checkpoint decodes with.

Choices: "Automatic" (a VAE file named after the checkpoint: `<name>.vae.safetensors`, `.vae.pt`,
`.vae.ckpt` beside it or in models/VAE, as A1111 looks for them), "None" (the checkpoint's own VAE)
or a file name from models/VAE. Files may be in the original (LDM) layout, with or without the
`first_stage_model.` prefix, or in diffusers' layout; `.pt`/`.ckpt` are read weights-only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from accelerate import init_empty_weights
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from .catalog import HashCache
from .checkpoint_io import read_state_dict
from .errors import ModelError
from .files import files_in

VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")
AUTOMATIC, NONE = "Automatic", "None"


@dataclass
class VaeFile:
    name: str  # file name relative to models/VAE
    path: Path
    shorthash: str | None = None  # first 10 hex of the sha256, filled in when the VAE is used


class VaeLibrary:
    def __init__(self, folder: Path, hashes: HashCache | None = None):
        self.folder = folder
        self.hashes = hashes or HashCache(None)

    def files(self) -> list[VaeFile]:
        return [VaeFile(p.relative_to(self.folder).as_posix(), p) for p in files_in(self.folder, VAE_SUFFIXES)]

    def choices(self) -> list[str]:
        return [AUTOMATIC, NONE] + [f.name for f in self.files()]

    def resolve(self, choice: str | None, checkpoint_path: Path) -> VaeFile | None:
        """The file a choice means for this checkpoint; None = the checkpoint's own VAE."""
        choice = (choice or AUTOMATIC).strip()
        if choice == NONE:
            return None
        if choice == AUTOMATIC:
            stem = checkpoint_path.name.rsplit(".", 1)[0]
            for folder in (checkpoint_path.parent, self.folder):
                for suffix in (".vae.safetensors", ".vae.pt", ".vae.ckpt"):
                    candidate = folder / (stem + suffix)
                    if candidate.is_file():
                        return VaeFile(candidate.name, candidate)
            return None
        for f in self.files():  # names resolve only through the listing: no path escapes the folder
            if choice in (f.name, f.path.stem, f.path.name):
                return f
        raise ModelError(f"VAE {choice!r} not found in {self.folder.name}/; choose one of: {', '.join(self.choices())}")

    def shorthash(self, f: VaeFile) -> str:
        return self.hashes.sha256(f.path)[:10]


def load_vae(f: VaeFile, like: AutoencoderKL) -> AutoencoderKL:
    """A VAE file as an AutoencoderKL shaped like the checkpoint's own (same config, dtype, device)."""
    sd = read_state_dict(f.path)
    if any(k.startswith("encoder.down_blocks.") for k in sd):  # already diffusers' layout
        state = sd
    else:
        if not any(k.startswith(("encoder.", "first_stage_model.encoder.")) for k in sd):
            raise ModelError(f"{f.name}: not a VAE (no encoder/decoder weights)")
        try:
            state = convert_ldm_vae_checkpoint(sd, dict(like.config))
        except (KeyError, IndexError, ValueError, RuntimeError) as e:
            raise ModelError(f"{f.name}: unknown VAE layout ({type(e).__name__}: {e})") from e
    with init_empty_weights():
        vae = AutoencoderKL.from_config(like.config)
    expected = vae.state_dict()
    missing = [k for k in expected if k not in state]
    bad = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or bad:
        raise ModelError(f"{f.name}: this VAE does not fit the checkpoint "
                         f"({len(missing)} missing, {len(bad)} of another shape, e.g. {(missing or bad)[0]})")
    dtype = next(like.parameters()).dtype
    vae.load_state_dict({k: state[k].to(dtype) for k in expected}, strict=True, assign=True)
    return vae.to(like.device).eval().requires_grad_(False)


def apply_vae(model, library: VaeLibrary, choice: str | None) -> None:
    """Point `model.vae` at the chosen VAE (loading the file once; "None" restores the checkpoint's own)."""
    if model.own_vae is None:
        model.own_vae = model.vae
    chosen = library.resolve(choice, model.info.path)
    if chosen is None:
        model.vae, model.vae_file = model.own_vae, None
    elif model.vae_file is None or model.vae_file.path != chosen.path:
        chosen.shorthash = library.shorthash(chosen)
        model.vae, model.vae_file = load_vae(chosen, model.own_vae), chosen
