"""Does the demo model mean what it draws? Generate from held-out captions and read the pictures.

    python -m webui.demo.evaluate --ckpt models/Stable-diffusion/easel-demo-shapes.safetensors --n 50 --steps 20

For each guidance scale (default 5 and 1) the table gives the share of images whose
dominant shape has the caption's colour, whose centre is nearest the caption's named
position, whose kind the model-free checker (`shape_checker`) recognises as the
caption's, and whose background has the caption's colour.

Captions come from single-shape scenes of a seed the training never used. Generation is
pluggable: `evaluate(generate, ...)` takes any `generate(prompts, seeds, cfg, steps) ->
list[PIL.Image]`. The default (`--engine easel`) is Easel itself: its loader and its engine,
exactly what the web UI runs. `--engine diffusers` builds a plain diffusers
StableDiffusionPipeline from components read back out of the file through diffusers' own
LDM converters instead, which also proves the exported file is right.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Callable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from PIL import Image

from webui.demo.scenes import SceneGenerator
from webui.demo.shape_checker import read_image

EVAL_SEED = 424242  # training uses --seed 0 (and its derived seeds); this range is held out

Generate = Callable[[Sequence[str], Sequence[int], float, int], list]


# ------------------------------------------------------------ configs from tensor shapes


def _count(sd, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def infer_unet_config(sd: dict, prefix: str = "model.diffusion_model.") -> dict:
    u = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    n_in = _count(u, r"input_blocks\.(\d+)\.")
    downs = sorted(int(m.group(1)) for k in u if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.weight$", k)))
    lpb = downs[0] - 1 if downs else n_in - 1
    nb = n_in // (lpb + 1)
    chans, down_types = [], []
    for b in range(nb):
        i = 1 + b * (lpb + 1)
        chans.append(u[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0])
        down_types.append("CrossAttnDownBlock2D" if f"input_blocks.{i}.1.proj_in.weight" in u else "DownBlock2D")
    up_types = []
    for j in range(nb):
        up_types.append(
            "CrossAttnUpBlock2D" if f"output_blocks.{j * (lpb + 1)}.1.proj_in.weight" in u else "UpBlock2D"
        )
    k_attn2 = next(v for k, v in u.items() if k.endswith("attn2.to_k.weight"))
    return dict(
        sample_size=64,
        in_channels=u["input_blocks.0.0.weight"].shape[1],
        out_channels=u["out.2.weight"].shape[0],
        down_block_types=tuple(down_types),
        up_block_types=tuple(up_types),
        block_out_channels=tuple(chans),
        layers_per_block=lpb,
        attention_head_dim=8,
        norm_num_groups=32,
        cross_attention_dim=k_attn2.shape[1],
        use_linear_projection=False,
    )


def infer_vae_config(sd: dict, prefix: str = "first_stage_model.") -> dict:
    v = {k[len(prefix):]: t for k, t in sd.items() if k.startswith(prefix)}
    nb = _count(v, r"encoder\.down\.(\d+)\.")
    lpb = _count(v, r"encoder\.down\.0\.block\.(\d+)\.")
    chans = tuple(v[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] for i in range(nb))
    return dict(
        in_channels=v["encoder.conv_in.weight"].shape[1],
        out_channels=v["decoder.conv_out.weight"].shape[0],
        down_block_types=("DownEncoderBlock2D",) * nb,
        up_block_types=("UpDecoderBlock2D",) * nb,
        block_out_channels=chans,
        layers_per_block=lpb,
        latent_channels=v["post_quant_conv.weight"].shape[0],
        norm_num_groups=32,
        scaling_factor=0.18215,
    )


def infer_clip_config(sd: dict, prefix: str = "cond_stage_model.transformer.text_model."):
    from transformers import CLIPTextConfig

    c = {k[len(prefix):]: t for k, t in sd.items() if k.startswith(prefix)}
    tok = c["embeddings.token_embedding.weight"]
    width = tok.shape[1]
    return CLIPTextConfig(
        vocab_size=tok.shape[0],
        hidden_size=width,
        intermediate_size=c["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_count(c, r"encoder\.layers\.(\d+)\."),
        num_attention_heads=max(1, width // 64),
        max_position_embeddings=c["embeddings.position_embedding.weight"].shape[0],
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=width,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def load_components(ckpt: str):
    """UNet, VAE and text encoder from an SD1.x single file, through diffusers' converters."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    from webui.models.ldm_export import ldm_clip_to_text_model

    sd = {k: v.float() for k, v in load_file(ckpt).items()}
    ucfg, vcfg, ccfg = infer_unet_config(sd), infer_vae_config(sd), infer_clip_config(sd)
    unet = UNet2DConditionModel(**ucfg)
    unet.load_state_dict(convert_ldm_unet_checkpoint(sd, ucfg), strict=True)
    vae = AutoencoderKL(**vcfg)
    vae.load_state_dict(convert_ldm_vae_checkpoint(sd, vcfg), strict=True)
    text = CLIPTextModel(ccfg)
    text.load_state_dict(ldm_clip_to_text_model(convert_ldm_clip_checkpoint(sd), text), strict=True)
    return unet.eval(), vae.eval(), text.eval()


def diffusers_generator(ckpt: str, batch: int = 25) -> Generate:
    """A `generate` function backed by a plain diffusers StableDiffusionPipeline."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from webui.models.tokenizers import load_clip_tokenizer

    unet, vae, text = load_components(ckpt)
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=load_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)

    def generate(prompts, seeds, cfg, steps):
        out = []
        for b in range(0, len(prompts), batch):
            ps, ss = list(prompts[b : b + batch]), list(seeds[b : b + batch])
            gens = [torch.Generator().manual_seed(int(s)) for s in ss]
            with torch.no_grad():
                res = pipe(ps, height=64, width=64, num_inference_steps=steps, guidance_scale=cfg, generator=gens)
            out += res.images
        return out

    return generate


def easel_generator(ckpt: str) -> Generate:
    """A `generate` function backed by Easel's own loader and engine (Euler, one image per caption)."""
    from pathlib import Path

    from webui.generation.engine import Engine
    from webui.generation.requests import Txt2ImgRequest
    from webui.models.catalog import CheckpointInfo
    from webui.models.loader import load_checkpoint

    path = Path(ckpt)
    model = load_checkpoint(CheckpointInfo(path, path.name), torch.device("cpu"), torch.float32)
    engine = Engine()
    width, height = model.default_size

    def generate(prompts, seeds, cfg, steps):
        return [engine.txt2img(model, Txt2ImgRequest(prompt=p, seed=int(s), cfg_scale=cfg, steps=steps, width=width,
                                                     height=height, sampler_name="Euler")).images[0]
                for p, s in zip(prompts, seeds)]

    return generate


# ------------------------------------------------------------ evaluation


def held_out_scenes(n: int, seed: int = EVAL_SEED):
    gen = SceneGenerator(seed)
    return [gen.scene(i, two=False) for i in range(n)]


def score(images, scenes) -> dict:
    hits = {"colour": 0, "position": 0, "shape": 0, "background": 0, "all": 0}
    for img, sc in zip(images, scenes):
        r = read_image(img)
        f = sc.shapes[0]
        c, p, k, b = r.colour == f.colour, r.position == f.position, r.kind == f.kind, r.background == sc.background
        hits["colour"] += c
        hits["position"] += p
        hits["shape"] += k
        hits["background"] += b
        hits["all"] += c and p and k and b
    n = max(1, len(scenes))
    return {k: v / n for k, v in hits.items()}


def evaluate(generate: Generate, n: int = 50, steps: int = 20, cfgs=(5.0, 1.0), seed: int = EVAL_SEED, grid: str | None = None):
    from webui.models.tokenizers import clean_text

    scenes = held_out_scenes(n, seed)
    prompts = [clean_text(s.caption) for s in scenes]
    seeds = [seed + i for i in range(n)]
    results, rows = {}, []
    for cfg in cfgs:
        t0 = time.time()
        images = generate(prompts, seeds, cfg, steps)
        results[cfg] = score(images, scenes)
        results[cfg]["seconds"] = time.time() - t0
        rows.append(images)
    if grid:
        cols = min(n, 25)
        sheet = Image.new("RGB", (64 * cols, 64 * (len(rows) + 1)))
        for i in range(cols):
            sheet.paste(scenes[i].image.resize((64, 64)), (64 * i, 0))
            for r, images in enumerate(rows):
                sheet.paste(images[i].resize((64, 64)), (64 * i, 64 * (r + 1)))
        sheet.save(grid)
    return results


def format_table(results: dict, n: int, steps: int) -> str:
    lines = [
        f"held-out captions: {n}, steps: {steps}, sampler: Euler, negative prompt: none",
        "| CFG | colour | position | shape | background | all four |",
        "|----:|-------:|---------:|------:|-----------:|---------:|",
    ]
    for cfg, r in results.items():
        lines.append(
            f"| {cfg:g} | {r['colour']:.0%} | {r['position']:.0%} | {r['shape']:.0%} | "
            f"{r['background']:.0%} | {r['all']:.0%} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default="models/Stable-diffusion/easel-demo-shapes.safetensors")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", default="5,1", help="comma-separated guidance scales")
    ap.add_argument("--seed", type=int, default=EVAL_SEED)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--engine", choices=["easel", "diffusers"], default="easel",
                    help="generate with Easel's engine (default) or a plain diffusers pipeline")
    ap.add_argument("--grid", default=None, help="save a contact sheet: drawn scenes, then one row per CFG")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfgs = tuple(float(c) for c in args.cfg.split(","))
    t0 = time.time()
    gen = easel_generator(args.ckpt) if args.engine == "easel" else diffusers_generator(args.ckpt)
    results = evaluate(gen, args.n, args.steps, cfgs, args.seed, args.grid)
    print(format_table(results, args.n, args.steps))
    print(f"({time.time() - t0:.0f}s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({str(k): v for k, v in results.items()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
