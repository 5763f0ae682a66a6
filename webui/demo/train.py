"""Train Easel's demo checkpoint from scratch on procedurally drawn scenes (CPU, ~1.5 h).

    python -m webui.demo.train --seed 0 --out models/Stable-diffusion/easel-demo-shapes.safetensors

Three phases, all seeded:
1. VAE (64x64x3 -> 16x16x4): L1 + image-gradient loss (keeps edges sharp), tiny KL, and a
   posterior that starts with a very low sampling-noise level. Mostly on 32x32 crops (the
   VAE is convolutional), then full frames. The latent scale is then folded into the VAE
   so that SD1's fixed scaling factor 0.18215 gives unit-std latents.
2. A pool of scenes is encoded once with the folded VAE.
3. Text encoder (CLIP, width 64) + UNet jointly: SD1's noise schedule and epsilon
   objective, offset noise 0.1, min-SNR-5 loss weights, 10 % empty captions (for
   classifier-free guidance), AdamW with warm-up and cosine decay, EMA of both models.
   Single-shape scenes dominate early; two-shape scenes ramp in.

The result is written in the original SD1.x single-file layout by `webui.models.ldm_export`.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from webui.demo.scenes import SceneGenerator, to_tensor_batch

SD1_SCALING = 0.18215
RESOLUTION = 64

UNET_KW = dict(
    sample_size=RESOLUTION // 4,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(64, 96, 128),
    layers_per_block=1,
    attention_head_dim=8,
    norm_num_groups=32,
    use_linear_projection=False,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
)
VAE_KW = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=RESOLUTION,
    scaling_factor=SD1_SCALING,
)
TEXT_WIDTH = 64
TEXT_LAYERS = 3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_models(seed: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_KW)
    torch.manual_seed(seed + 1)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=TEXT_WIDTH,
            intermediate_size=TEXT_WIDTH * 4,
            num_hidden_layers=TEXT_LAYERS,
            num_attention_heads=TEXT_WIDTH // 64,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            projection_dim=TEXT_WIDTH,
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        )
    )
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(cross_attention_dim=TEXT_WIDTH, **UNET_KW)
    return vae, text, unet


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def cosine_lr(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


# ---------------------------------------------------------------- VAE


def _grad_l1(a, b):
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return (dx(a) - dx(b)).abs().mean() + (dy(a) - dy(b)).abs().mean()


def train_vae(vae, gen: SceneGenerator, args, deadline: float):
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0, betas=(0.9, 0.99))
    # very low sampling noise at the start: the posterior's log-variance starts at -10
    with torch.no_grad():
        vae.quant_conv.bias[4:].fill_(-10.0)
    total = args.vae_crop_steps + args.vae_full_steps
    rng = np.random.default_rng([args.seed, 11])
    idx = 0
    t0 = time.time()
    vae.train()
    for step in range(total):
        if time.time() > deadline:
            log(f"vae: time budget reached at step {step}")
            break
        crop = step < args.vae_crop_steps
        bs = args.vae_crop_batch if crop else args.vae_full_batch
        scenes = gen.batch(idx, bs)
        idx += bs
        x = to_tensor_batch(scenes)
        if crop:
            oy, ox = (int(v) * 4 for v in rng.integers(0, 9, size=2))
            x = x[:, :, oy : oy + 32, ox : ox + 32]
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, total, args.vae_lr, 100)
        post = vae.encode(x).latent_dist
        z = post.sample()
        rec = vae.decode(z).sample
        l1 = (rec - x).abs().mean()
        gl = _grad_l1(rec, x)
        kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean()
        loss = l1 + args.vae_grad_w * gl + args.vae_kl_w * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == total - 1:
            log(
                f"vae step {step}/{total} {'crop32' if crop else 'full64'} l1 {l1.item():.4f} grad {gl.item():.4f} "
                f"kl {kl.item():.2f} std(mu) {post.mean.std().item():.3f} std(z-noise) {post.std.mean().item():.4f} "
                f"({time.time() - t0:.0f}s)"
            )
    vae.eval()
    return vae


@torch.no_grad()
def fold_latent_scale(vae, gen: SceneGenerator, n: int = 128, start: int = 5_000_000, preview: str | None = None) -> float:
    """Fold a latent scale s into quant_conv/post_quant_conv so that mean*0.18215 has unit std."""
    x = to_tensor_batch(gen.batch(start, n))
    before = vae.decode(vae.encode(x).latent_dist.mean).sample
    mu = vae.encode(x).latent_dist.mean
    sigma = float(mu.std())
    s = 1.0 / (SD1_SCALING * sigma)
    vae.quant_conv.weight[:4] *= s
    vae.quant_conv.bias[:4] *= s
    vae.quant_conv.bias[4:] += 2.0 * math.log(s)
    vae.post_quant_conv.weight[:, :] /= s
    post = vae.encode(x).latent_dist
    after = vae.decode(post.mean).sample
    new_std = float((post.mean * SD1_SCALING).std())
    diff = float((after - before).abs().max())
    log(f"fold: sigma(mu) {sigma:.4f} -> s {s:.4f}; std(mu*0.18215) now {new_std:.4f}; max |decode change| {diff:.2e}")
    assert abs(new_std - 1.0) < 1e-3 and diff < 1e-3, "latent-scale folding changed the VAE"
    rec_l1 = float((after - x).abs().mean())
    log(f"vae held-out L1 (mean latent) {rec_l1:.4f}")
    if preview:
        from PIL import Image

        pair = torch.cat([x[:16], after[:16].clamp(-1, 1)], 2)  # original above reconstruction
        arr = ((pair + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        Image.fromarray(np.concatenate(list(arr), 1)).save(preview)
    return s


@torch.no_grad()
def encode_pool(vae, gen: SceneGenerator, n_single: int, n_two: int, start: int, tokenizer):
    from webui.models.tokenizers import clean_text

    means, logvars, captions = [], [], []
    t0 = time.time()
    for two, n, off in ((False, n_single, 0), (True, n_two, n_single)):
        for b in range(0, n, 128):
            scenes = [gen.scene(start + off + i, two=two) for i in range(b, min(n, b + 128))]
            post = vae.encode(to_tensor_batch(scenes)).latent_dist
            means.append(post.mean.clone())
            logvars.append(post.logvar.clone())
            captions += [clean_text(s.caption) for s in scenes]
        log(f"pool: encoded {n} {'two' if two else 'one'}-shape scenes ({time.time() - t0:.0f}s)")
    ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return torch.cat(means), torch.cat(logvars), ids


# ---------------------------------------------------------------- UNet + text encoder


@torch.no_grad()
def ema_update(ema, model, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1.0 - decay)


def save(path, unet, vae, text, metadata) -> None:
    from webui.models.ldm_export import save_ldm_checkpoint

    tensors = sum(p.numel() for m in (unet, vae, text) for p in m.state_dict().values())
    dtype = torch.float16 if tensors * 4 > 50_000_000 else None
    save_ldm_checkpoint(path, unet, vae, text, metadata=metadata, dtype=dtype)
    log(f"saved {path} ({os.path.getsize(path) / 1e6:.1f} MB, {'fp16' if dtype else 'fp32'})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="models/Stable-diffusion/easel-demo-shapes.safetensors")
    ap.add_argument("--minutes", type=float, default=86.0, help="wall-clock budget for the whole run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--snapshot", default="/tmp/easel-demo-snapshot.safetensors", help="intermediate exports")
    ap.add_argument("--snapshot-minutes", type=float, default=15.0)
    ap.add_argument("--vae-preview", default="/tmp/easel-demo-vae.png", help="originals above reconstructions")
    ap.add_argument("--vae-minutes", type=float, default=24.0, help="cap on the VAE phase")
    ap.add_argument("--vae-crop-steps", type=int, default=2600)
    ap.add_argument("--vae-full-steps", type=int, default=200)
    ap.add_argument("--vae-crop-batch", type=int, default=16)
    ap.add_argument("--vae-full-batch", type=int, default=8)
    ap.add_argument("--vae-lr", type=float, default=2e-3)
    ap.add_argument("--vae-grad-w", type=float, default=1.0)
    ap.add_argument("--vae-kl-w", type=float, default=1e-5)
    ap.add_argument("--pool-single", type=int, default=10000)
    ap.add_argument("--pool-two", type=int, default=2500)
    ap.add_argument("--init-from", default=None, help="continue from an exported checkpoint (skips the VAE phase)")
    ap.add_argument("--pool-start", type=int, default=1_000_000, help="first scene index of the latent pool")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--unet-steps", type=int, default=3600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--offset-noise", type=float, default=0.1)
    ap.add_argument("--cond-drop", type=float, default=0.1)
    ap.add_argument("--min-snr", type=float, default=5.0)
    ap.add_argument("--two-shape-max", type=float, default=0.3)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.time()
    deadline = t_start + args.minutes * 60
    log(f"args: {vars(args)}")

    from diffusers import DDPMScheduler

    from webui.models.tokenizers import load_clip_tokenizer

    tokenizer = load_clip_tokenizer()
    gen = SceneGenerator(args.seed, RESOLUTION, two_shape_prob=0.25)
    if args.init_from:
        # continue from an exported checkpoint: its VAE (already folded) is kept as is
        from safetensors import safe_open

        from webui.demo.evaluate import load_components

        unet, vae, text = load_components(args.init_from)
        with safe_open(args.init_from, "pt") as f:
            prev = f.metadata() or {}
        scale = float(prev.get("easel.demo.latent_fold_scale", "nan"))
        prev_steps = int(prev.get("easel.demo.steps", "0"))
        vae.requires_grad_(False)
        log(f"init from {args.init_from} ({prev_steps} UNet steps so far)")
    else:
        prev_steps = 0
        vae, text, unet = build_models(args.seed)
    log(f"params: unet {n_params(unet) / 1e6:.2f} M, text {n_params(text) / 1e6:.2f} M, vae {n_params(vae) / 1e6:.2f} M")

    # ---- phase 1: VAE
    if not args.init_from:
        vae_deadline = t_start + args.vae_minutes * 60
        train_vae(vae, gen, args, vae_deadline)
        vae.requires_grad_(False)
        scale = fold_latent_scale(vae, gen, preview=args.vae_preview)
    t_vae = time.time() - t_start
    log(f"phase 1 (VAE) done in {t_vae / 60:.1f} min")

    # ---- phase 2: latent pool
    mean, logvar, ids = encode_pool(vae, gen, args.pool_single, args.pool_two, args.pool_start, tokenizer)
    std = torch.exp(0.5 * logvar)
    n_single = args.pool_single
    empty_ids = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
    t_pool = time.time() - t_start
    log(f"phase 2 (pool) done at {t_pool / 60:.1f} min; latent std {float((mean * SD1_SCALING).std()):.3f}")

    # ---- phase 3: text encoder + UNet
    sched = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon",
    )
    acp = sched.alphas_cumprod
    snr = acp / (1 - acp)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text).eval()
    ema_unet.requires_grad_(False)
    ema_text.requires_grad_(False)
    unet.train()
    text.train()
    g = torch.Generator().manual_seed(args.seed + 100)
    total = args.unet_steps
    metadata = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1",
        "modelspec.implementation": "https://github.com/CompVis/stable-diffusion",
        "modelspec.title": "Easel demo shapes",
        "modelspec.resolution": f"{RESOLUTION}x{RESOLUTION}",
        "modelspec.description": "Tiny SD1.x-layout model trained from scratch by Easel on drawn shapes "
        "(webui/demo/train.py). Prompts like 'a red circle on the left, blue background'.",
        "modelspec.license": "same as Easel",
        "easel.demo.seed": str(args.seed),
        "easel.demo.latent_fold_scale": f"{scale:.6f}",
    }
    t0 = time.time()
    last_snap = time.time()
    losses = []
    step = 0
    while step < total:
        if step == 20:
            per = (time.time() - t0) / 20
            left = deadline - time.time() - 60
            fit = int(left / per)
            if fit < total:
                log(f"unet: {per:.2f}s/step; budget fits {fit} of {total} planned steps -> plan {fit}")
                total = max(fit, 21)
            else:
                log(f"unet: {per:.2f}s/step; {total} steps take ~{total * per / 60:.0f} min")
        p_two = args.two_shape_max * (1.0 if args.init_from else min(1.0, step / (0.5 * total)))
        two = torch.rand(args.batch, generator=g) < p_two
        i_one = torch.randint(0, n_single, (args.batch,), generator=g)
        i_two = torch.randint(n_single, len(mean), (args.batch,), generator=g)
        idx = torch.where(two, i_two, i_one)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * SD1_SCALING
        tok = ids[idx].clone()
        drop = torch.rand(args.batch, generator=g) < args.cond_drop
        tok[drop] = empty_ids
        noise = torch.randn(z0.shape, generator=g)
        noise = noise + args.offset_noise * torch.randn(z0.shape[0], z0.shape[1], 1, 1, generator=g)
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        zt = sched.add_noise(z0, noise, t)
        for grp in opt.param_groups:
            grp["lr"] = cosine_lr(step, total, args.lr, args.warmup)
        cond = text(tok).last_hidden_state
        pred = unet(zt, t, cond).sample
        w = torch.clamp(snr[t], max=args.min_snr) / snr[t]
        loss = ((pred - noise).pow(2).mean(dim=(1, 2, 3)) * w).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        ema_update(ema_unet, unet, decay)
        ema_update(ema_text, text, decay)
        losses.append(loss.item())
        step += 1
        if step % 50 == 0 or step == total:
            el = time.time() - t0
            log(
                f"unet step {step}/{total} loss {np.mean(losses[-50:]):.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"p_two {p_two:.2f} ({el:.0f}s, {el / step:.2f}s/step)"
            )
        if args.snapshot and time.time() - last_snap > args.snapshot_minutes * 60 and step < total:
            snap_meta = dict(metadata, **{"easel.demo.steps": str(prev_steps + step)})
            save(args.snapshot, ema_unet, vae, ema_text, snap_meta)
            last_snap = time.time()

    metadata["easel.demo.steps"] = str(prev_steps + step)
    metadata["easel.demo.train_minutes"] = f"{(time.time() - t_start) / 60:.1f}"
    save(args.out, ema_unet, vae, ema_text, metadata)
    log(
        f"done: total {(time.time() - t_start) / 60:.1f} min (vae {t_vae / 60:.1f}, pool {(t_pool - t_vae) / 60:.1f}, "
        f"unet {(time.time() - t0) / 60:.1f} over {step} steps)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
