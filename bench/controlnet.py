"""ControlNet's cost per sampling step: Easel with no, one and two units, against diffusers'
StableDiffusionControlNetPipeline (one ControlNet, and MultiControlNet with two) on the very same modules.

A tiny SD1.x model and tiny ControlNets on CPU by default (random weights; `tiny_models.tiny_controlnet`);
`--full` builds the full-size SD1.5 architecture and ControlNets copied from its UNet (the GPU figures,
on the device machine). Same scheduler (Euler), size, CFG, seed and control picture everywhere; per-step
time is the slope between a short and a long run (prompt encoding, preprocessing and decoding cancel),
interleaved and repeated in one process so machine noise hits every variant alike.

    python bench/controlnet.py                              # tiny, CPU
    python bench/controlnet.py --full --device cuda --dtype float16 --size 512
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

import webui  # noqa: E402,F401
from diffusers import ControlNetModel, EulerDiscreteScheduler, StableDiffusionControlNetPipeline  # noqa: E402

from gpu_speed import full_size, loaded_model, per_step, tiny  # noqa: E402
from tiny_models import tiny_controlnet  # noqa: E402
from webui.features.controlnet import ControlNet  # noqa: E402
from webui.generation.builtins import register_builtins  # noqa: E402
from webui.generation.engine import Engine  # noqa: E402
from webui.generation.extension_points import FeatureRegistry  # noqa: E402
from webui.generation.requests import Txt2ImgRequest  # noqa: E402

PROMPT = "a red circle on the left, blue background"


class InMemoryControlNets:
    """The feature's model library, holding ControlNets already built (the bench times steps, not loading)."""

    def __init__(self, nets: dict[str, ControlNetModel]):
        self.nets = nets
        self.annotators = None  # the bench's units use module "none"

    def find(self, name: str) -> str:
        return name

    def title(self, name: str) -> str:
        return name

    def load(self, name: str, unet, checkpoint: str, device, dtype) -> ControlNetModel:
        return self.nets[name]


def full_controlnet(unet, seed: int) -> ControlNetModel:
    from gpu_speed import _random_init
    from accelerate import init_empty_weights

    torch.manual_seed(seed)
    with init_empty_weights():
        cn = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    return _random_init(cn, unet.device, unet.dtype)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="full-size SD1.5 architecture (else tiny)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--short", type=int, default=4)
    ap.add_argument("--long", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    parts = full_size("sd15", device, dtype) if args.full else tiny("sd15", device, dtype)
    model = loaded_model("sd15", parts, device, dtype)
    make = full_controlnet if args.full else (lambda unet, seed: tiny_controlnet(unet, seed).to(device, dtype))
    nets = {"cn-a": make(model.unet, 1), "cn-b": make(model.unet, 2)}

    features = register_builtins(FeatureRegistry())
    features.add(ControlNet(InMemoryControlNets(nets)))
    engine = Engine(features=features, nan_check=False)
    size = args.size
    picture = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(picture).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill="white")

    def easel(units: int):
        args_ = [{"module": "none", "model": name, "image": picture} for name in list(nets)[:units]]
        scripts = {"controlnet": {"args": args_}} if units else {}

        def run(steps: int) -> None:
            req = Txt2ImgRequest(prompt=PROMPT, steps=steps, width=size, height=size, seed=1, sampler_name="Euler",
                                 scheduler="Uniform", cfg_scale=7, alwayson_scripts=scripts)
            engine.generate(model, features.validate(req), None)
        return run

    def bare(units: int):
        chosen = list(nets.values())[:units]
        pipe = StableDiffusionControlNetPipeline(
            vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
            controlnet=chosen[0] if units == 1 else chosen, scheduler=EulerDiscreteScheduler.from_config(
                model.scheduler_config), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)

        def run(steps: int) -> None:
            pipe(PROMPT, image=picture if units == 1 else [picture] * units, num_inference_steps=steps, width=size,
                 height=size, guidance_scale=7, generator=torch.Generator(device).manual_seed(1))
        return run

    variants = {"easel, no ControlNet": easel(0), "easel, 1 unit": easel(1), "easel, 2 units": easel(2),
                "diffusers, 1 ControlNet": bare(1), "diffusers, 2 ControlNets": bare(2)}
    with torch.no_grad():
        times = {name: [] for name in variants}
        for _ in range(args.repeats):  # interleaved: each repeat times every variant once
            for name, run in variants.items():
                times[name].append(per_step(run, args.short, args.long, device, 1))
    ms = {name: sorted(t)[len(t) // 2] * 1000 for name, t in times.items()}
    arch = "full-size SD1.5" if args.full else "tiny SD1.x"
    print(f"{arch}, {size}x{size}, {args.device} {args.dtype}, Euler, CFG 7, median of {args.repeats}, "
          f"torch threads {torch.get_num_threads()}")
    print("| run | ms/step |\n|---|---|")
    for name, value in ms.items():
        print(f"| {name} | {value:.1f} |")
    base = ms["easel, no ControlNet"]
    print(f"| 1 unit / none | {ms['easel, 1 unit'] / base:.2f}× |")
    print(f"| 2 units / none | {ms['easel, 2 units'] / base:.2f}× |")
    print(f"| easel / diffusers, 1 ControlNet | {ms['easel, 1 unit'] / ms['diffusers, 1 ControlNet']:.3f}× |")
    print(f"| easel / diffusers, 2 ControlNets | {ms['easel, 2 units'] / ms['diffusers, 2 ControlNets']:.3f}× |")
    return ms


if __name__ == "__main__":
    main()
