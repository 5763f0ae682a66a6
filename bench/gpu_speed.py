"""txt2img speed on a GPU: Easel's engine (with each speed switch) against a bare diffusers pipeline.

Full-size SD1.5 (512x512) and SDXL (1024x1024) architectures from Easel's shipped configs, random
weights (speed does not depend on them), 20 steps, CFG on, batch 1 and 4, fp16. The bare pipeline
(StableDiffusionPipeline / StableDiffusionXLPipeline, default settings: SDPA attention, eager) runs
the very same modules first; then Easel plain, with channels-last, and with torch.compile (in
place, so it comes last). Per-step time is the slope between a short and a long run, which cancels
prompt encoding and VAE decoding. Model FLOPs utilisation = UNet FLOPs per step (counted by
torch.utils.flop_counter on one guided step) x steps/s / the GPU's dense fp16 peak.

    python bench/gpu_speed.py                        # on a CUDA machine: the real figures
    python bench/gpu_speed.py --tiny --device cpu    # CI smoke run on tiny models (figures mean nothing)

Goal (issue "model manager"): SD1.5 batch 1, Easel >= 2x the bare diffusers eager figure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

import webui  # noqa: E402,F401
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

from webui.generation.engine import Engine  # noqa: E402
from webui.generation.requests import Txt2ImgRequest  # noqa: E402
from webui.generation.samplers import build_scheduler, resolve_sampler  # noqa: E402
from webui.models.catalog import CheckpointInfo  # noqa: E402
from webui.models.families import ModelFamily  # noqa: E402
from webui.models.loader import CONFIG_DIRS, LoadedModel  # noqa: E402
from webui.models.speed import SpeedOptions, prepare  # noqa: E402
from webui.models.tokenizers import load_clip_tokenizer  # noqa: E402

# dense fp16/bf16 tensor-core peaks (TFLOPS), from the vendors' data sheets
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10": 125.0,
               "RTX 4090": 165.2, "RTX 3090": 71.0, "T4": 65.0, "V100": 125.0}


def _random_init(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Materialise a meta-built module on `device` with small random weights (fast, on the device)."""
    module = module.to_empty(device=device)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or p.ndim == 1:
                p.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
            else:
                p.normal_(0.0, 0.02)
        for b in module.buffers():  # position ids and the like are rebuilt by the configs' defaults
            if b.is_floating_point():
                b.zero_()
    return module.to(dtype).eval().requires_grad_(False)


def full_size(arch: str, device: torch.device, dtype: torch.dtype) -> dict:
    from accelerate import init_empty_weights

    cfg = CONFIG_DIRS["sd1" if arch == "sd15" else "sdxl"]
    load = lambda sub: json.loads((cfg / sub / "config.json").read_text())  # noqa: E731
    with init_empty_weights():
        parts = {"unet": UNet2DConditionModel.from_config(load("unet")), "vae": AutoencoderKL.from_config(load("vae")),
                 "text_encoder": CLIPTextModel(CLIPTextConfig(**load("text_encoder")))}
        if arch == "sdxl":
            parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**load("text_encoder_2")))
    parts = {k: _random_init(m, device, dtype) for k, m in parts.items()}
    for te in [k for k in parts if k.startswith("text_encoder")]:  # position ids must count 0..76
        emb = getattr(parts[te], "text_model", parts[te]).embeddings
        if hasattr(emb, "position_ids"):
            emb.position_ids.copy_(torch.arange(emb.position_ids.shape[-1], device=device)[None])
    return parts


def tiny(arch: str, device: torch.device, dtype: torch.dtype) -> dict:
    from tiny_models import build_tiny_sd, build_tiny_sdxl

    t = build_tiny_sd(0) if arch == "sd15" else build_tiny_sdxl(0)
    parts = {"unet": t.unet, "vae": t.vae, "text_encoder": t.text_encoder}
    if t.text_encoder_2 is not None:
        parts["text_encoder_2"] = t.text_encoder_2
    return {k: m.to(device, dtype) for k, m in parts.items()}


def loaded_model(arch: str, parts: dict, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    family = ModelFamily(name="sd1" if arch == "sd15" else "sdxl", inpainting=False, prediction_type="epsilon",
                         original_config={})
    sched = json.loads((CONFIG_DIRS[family.name] / "scheduler" / "scheduler_config.json").read_text())
    return LoadedModel(
        info=CheckpointInfo(Path(f"random-{arch}"), f"random-{arch}"), family=family, unet=parts["unet"],
        vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=load_clip_tokenizer(),
        scheduler_config=sched, device=device, dtype=dtype, text_encoder_2=parts.get("text_encoder_2"),
        tokenizer_2=load_clip_tokenizer("!") if "text_encoder_2" in parts else None,
    )


def unet_flops(model: LoadedModel, batch: int, size: int) -> float:
    """FLOPs of one guided UNet call (batch x 2 for CFG), counted by PyTorch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    unet = model.unet
    lat = size // model.vae_scale_factor
    x = torch.zeros(2 * batch, 4, lat, lat, device=model.device, dtype=model.dtype)
    ctx = torch.zeros(2 * batch, 77, unet.config.cross_attention_dim, device=model.device, dtype=model.dtype)
    added = None
    if unet.config.addition_embed_type == "text_time":
        pooled = model.text_encoder_2.config.projection_dim
        added = {"text_embeds": torch.zeros(2 * batch, pooled, device=model.device, dtype=model.dtype),
                 "time_ids": torch.zeros(2 * batch, 6, device=model.device, dtype=model.dtype)}
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(x, torch.tensor([500], device=model.device), encoder_hidden_states=ctx, added_cond_kwargs=added)
    return float(counter.get_total_flops())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def per_step(run, short: int, long: int, device: torch.device, repeats: int) -> float:
    """Seconds per sampling step: the slope between a short and a long run (median of `repeats`)."""
    run(short)  # warm-up: allocations, cuDNN autotuning, compilation
    slopes = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        run(short)
        sync(device)
        t1 = time.perf_counter()
        run(long)
        sync(device)
        t2 = time.perf_counter()
        slopes.append(((t2 - t1) - (t1 - t0)) / (long - short))
    slopes.sort()
    return slopes[len(slopes) // 2]


def bench_arch(arch: str, args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    size = args.size or (64 if args.tiny else 512 if arch == "sd15" else 1024)
    parts = (tiny if args.tiny else full_size)(arch, device, dtype)
    model = loaded_model(arch, parts, device, dtype)
    prompt = "a photograph of an astronaut riding a horse"
    sampler, schedule = resolve_sampler("Euler", "Automatic")
    pipe_cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
    extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False} if arch == "sd15" else {}
    pipe = pipe_cls(scheduler=build_scheduler(sampler, schedule, model.scheduler_config), tokenizer=model.tokenizer,
                    **({"tokenizer_2": model.tokenizer_2} if arch == "sdxl" else {}), **parts, **extra)
    pipe.set_progress_bar_config(disable=True)
    engine = Engine()
    rows = []
    for batch in args.batch:
        flops = unet_flops(model, batch, size)

        def bare(steps: int) -> None:
            pipe(prompt, num_inference_steps=steps, width=size, height=size, guidance_scale=7,
                 num_images_per_prompt=batch, output_type="latent")

        def easel(steps: int) -> None:
            req = Txt2ImgRequest(prompt=prompt, steps=steps, width=size, height=size, seed=1, batch_size=batch,
                                 sampler_name="Euler", cfg_scale=7)
            engine.txt2img(model, req)

        variants = [("diffusers (bare, eager)", None, bare), ("easel default", SpeedOptions(), easel)]
        if "channels-last" in args.variants:
            variants.append(("easel +channels-last", SpeedOptions(channels_last=True), easel))
        if "compile" in args.variants:
            variants.append(("easel +channels-last +compile", SpeedOptions(channels_last=True, compile_unet=True), easel))
        base = None
        for name, opts, run in variants:
            if opts is not None:
                prepare(model, opts)
            sec = per_step(run, args.short, args.long, device, args.repeats)
            base = base or sec
            row = {"arch": arch, "size": size, "batch": batch, "variant": name, "ms_per_step": sec * 1000,
                   "steps_per_s": 1 / sec, "speedup_vs_bare": base / sec, "tflops": flops / sec / 1e12}
            rows.append(row)
        model.speed_state.clear()  # later batches re-apply (compile stays: nn.Module.compile is in place)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="sd15,sdxl")
    ap.add_argument("--batch", default="1,4")
    ap.add_argument("--variants", default="channels-last,compile", help="speed switches to time besides default")
    ap.add_argument("--short", type=int, default=5)
    ap.add_argument("--long", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    ap.add_argument("--tiny", action="store_true", help="tiny models (CPU smoke run)")
    args = ap.parse_args(argv)
    args.batch = [int(b) for b in args.batch.split(",")]
    args.variants = set(args.variants.split(",")) if args.variants else set()
    device = torch.device(args.device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type} ({torch.get_num_threads()} threads)"
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in gpu), None)
    print(f"device: {gpu}; torch {torch.__version__}; dtype {args.dtype}; peak "
          f"{f'{peak} TFLOPS' if peak else 'unknown'}; steps {args.short}->{args.long}, median of {args.repeats}")
    rows = []
    for arch in args.arch.split(","):
        rows += bench_arch(arch, args, device, dtype)
    print(f"{'arch':6}{'size':>6}{'batch':>6}  {'variant':28}{'ms/step':>10}{'steps/s':>9}{'x bare':>8}{'TFLOPS':>9}{'MFU':>7}")
    for r in rows:
        mfu = f"{r['tflops'] / peak:.1%}" if peak else "-"
        print(f"{r['arch']:6}{r['size']:>6}{r['batch']:>6}  {r['variant']:28}{r['ms_per_step']:>10.1f}"
              f"{r['steps_per_s']:>9.2f}{r['speedup_vs_bare']:>8.2f}{r['tflops']:>9.1f}{mfu:>7}")
    return rows


if __name__ == "__main__":
    main()
