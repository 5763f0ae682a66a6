"""Command-line flags (A1111's names and meanings) and the typed settings built from them."""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="app.py",
        description="Easel: a self-hosted Stable Diffusion web UI (AUTOMATIC1111-compatible flags).",
    )
    net = p.add_argument_group("network")
    net.add_argument("--port", type=int, default=None, help="port to serve on (default 7860)")
    net.add_argument("--listen", action="store_true",
                     help="bind 0.0.0.0 so other machines on the network can connect (set --gradio-auth too)")
    net.add_argument("--share", action="store_true", help="open a public Gradio share link (for Colab)")
    paths = p.add_argument_group("paths")
    paths.add_argument("--data-dir", type=Path, default=REPO_ROOT,
                       help="base folder for models/, outputs/, config and caches (default: Easel's folder)")
    paths.add_argument("--ckpt-dir", type=Path, default=None,
                       help="another folder to search for checkpoints, besides models/Stable-diffusion")
    paths.add_argument("--ckpt", type=str, default=None, help="checkpoint to select at start (title, name or hash)")
    dev = p.add_argument_group("device and speed")
    dev.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                     help="where models run (default auto: cuda, then mps, then cpu)")
    dev.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                     help="weights dtype (default auto: fp16 on cuda/mps, fp32 on cpu)")
    dev.add_argument("--no-half", action="store_true", help="keep models in fp32 (same as --precision fp32)")
    dev.add_argument("--xformers", action="store_true",
                     help="use xformers attention when installed and on CUDA, else PyTorch SDPA (the default)")
    dev.add_argument("--skip-load-model-at-start", action="store_true",
                     help="do not load the default checkpoint at start; it loads on first use")
    return p


@dataclass
class Settings:
    data_dir: Path
    port: int = 7860
    listen: bool = False
    share: bool = False
    ckpt_dir: Path | None = None
    ckpt: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    xformers: bool = False
    skip_load_model_at_start: bool = False

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def checkpoint_dirs(self) -> list[Path]:
        dirs = [self.models_dir / "Stable-diffusion"]
        if self.ckpt_dir is not None:
            dirs.append(self.ckpt_dir)
        return dirs

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def host(self) -> str:
        return "0.0.0.0" if self.listen else "127.0.0.1"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this torch build")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SystemExit("--device mps: MPS is not available on this machine")
    return torch.device(name)


def pick_dtype(precision: str, no_half: bool, device: torch.device) -> torch.dtype:
    if no_half:
        return torch.float32
    if precision == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    return PRECISIONS[precision]


def settings_from_args(argv: list[str] | None = None) -> Settings:
    args = build_parser().parse_args(argv)
    device = pick_device(args.device)
    return Settings(
        data_dir=args.data_dir.resolve(),
        port=args.port or 7860,
        listen=args.listen,
        share=args.share,
        ckpt_dir=args.ckpt_dir.resolve() if args.ckpt_dir else None,
        ckpt=args.ckpt,
        device=device,
        dtype=pick_dtype(args.precision, args.no_half, device),
        xformers=args.xformers,
        skip_load_model_at_start=args.skip_load_model_at_start,
    )
