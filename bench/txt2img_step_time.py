"""Easel's txt2img time per sampling step against a bare diffusers StableDiffusionPipeline.

Both run the same components (a tiny SD1.x model of random weights, or a checkpoint you name) with
the same scheduler, size, CFG and seed, interleaved in one process so machine noise hits both alike.
Per-step time is the slope between a short and a long run, which cancels prompt encoding and VAE
decoding. Goal: Easel ≤ 1.03× diffusers.

    python bench/txt2img_step_time.py [--ckpt PATH] [--size 64] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

import webui  # noqa: E402,F401
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline  # noqa: E402

from webui.generation.engine import Engine  # noqa: E402
from webui.generation.requests import Txt2ImgRequest  # noqa: E402
from webui.models.catalog import CheckpointInfo  # noqa: E402
from webui.models.loader import load_checkpoint  # noqa: E402


def tiny_checkpoint(folder: Path) -> Path:
    from tiny_models import build_tiny_sd, write_safetensors
    return write_safetensors(build_tiny_sd(0), folder / "bench-tiny.safetensors")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", type=Path, help="checkpoint to time (default: a tiny random SD1.x model)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--short", type=int, default=4)
    ap.add_argument("--long", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.ckpt or tiny_checkpoint(ROOT / "bench" / "out")
    info = CheckpointInfo(path, path.name, hash_files=[path])
    model = load_checkpoint(info, torch.device("cpu"), torch.float32)
    scheduler = EulerDiscreteScheduler.from_config(model.scheduler_config)
    pipe = StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    engine = Engine()
    prompt, size = "a red circle on the left, blue background", args.size

    def easel(steps: int) -> float:
        req = Txt2ImgRequest(prompt=prompt, steps=steps, width=size, height=size, seed=1,
                             sampler_name="Euler", scheduler="Uniform", cfg_scale=7)
        t = time.perf_counter()
        engine.txt2img(model, req)
        return time.perf_counter() - t

    def bare(steps: int) -> float:
        t = time.perf_counter()
        pipe(prompt, num_inference_steps=steps, width=size, height=size, guidance_scale=7,
             generator=torch.Generator().manual_seed(1))
        return time.perf_counter() - t

    easel(2), bare(2)  # warm-up: first calls at a size pay for allocations
    per_step = {"easel": [], "diffusers": []}
    for _ in range(args.repeats):
        for name, fn in (("easel", easel), ("diffusers", bare)):
            per_step[name].append((fn(args.long) - fn(args.short)) / (args.long - args.short))
    e, d = statistics.median(per_step["easel"]), statistics.median(per_step["diffusers"])
    print(f"model: {path.name}, {size}x{size}, CFG on, Euler, torch threads {torch.get_num_threads()}")
    print(f"{'':12}{'ms/step (median of ' + str(args.repeats) + ')':>28}")
    print(f"{'diffusers':12}{d * 1000:>28.1f}")
    print(f"{'easel':12}{e * 1000:>28.1f}")
    print(f"ratio easel/diffusers: {e / d:.3f}  (goal <= 1.03)")


if __name__ == "__main__":
    main()
