"""Train Easel's demo embedding model, a tiny CLIP, on the demo scenes (CPU, ~25 min), and evaluate it.

    python -m webui.demo.train_clip --seed 0 --minutes 24 --out webui/gallery/demo-clip.safetensors
    python -m webui.demo.train_clip --evaluate webui/gallery/demo-clip.safetensors   # figures only
        [--img2img-ckpt models/Stable-diffusion/easel-demo-shapes.safetensors]

The model is a transformers `CLIPModel` (ViT image tower on 64x64 pictures, 8x8 patches; a small causal text
transformer over CLIP's own BPE vocabulary), so the shipped file loads through the same code as a user's CLIP.

Training pairs are drawn scenes (`webui/demo/scenes.py`, fresh ones every step) with their captions, or, for
60 % of them, a partial description of the scene ("a red circle", "a large star at the top", "blue background"),
so short queries are in the training distribution. Because a partial description fits many pictures, the loss
is CLIP's symmetric InfoNCE with a learnable temperature, with every picture a description fits counted as a
positive (soft targets), not only its own. Half of each batch are twins of the other half (one shape of
another kind, or another size): hard negatives that only the outline tells apart. Pictures are randomly
blurred, noised, tinted and JPEG re-encoded, so an img2img child of a picture stays close to it. Unused rows
of the token table stay zero and are not stored.

Evaluation uses scenes of another seed: text->image recall@1/@5, image->text recall@5, colour + shape queries
("a red circle": share of the top 5 that have a red circle, and mean average precision) and img2img-like
copies (blur + noise + JPEG) finding their original in the top 3; with `--img2img-ckpt`, also real img2img
children painted by the demo checkpoint finding their parent.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
from dataclasses import dataclass, replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image, ImageFilter

from webui.demo.scenes import COLOURS, POSITION_PHRASES, SHAPES, Scene, SceneGenerator, draw_scene, make_caption
from webui.gallery.embedder import DemoClip, Preprocess, save_demo_clip

RESOLUTION = 64
EVAL_SEED = 7_000_001  # held-out scenes: training uses --seed (0), the tests another seed again
PREPROCESS = Preprocess(size=RESOLUTION, crop=RESOLUTION, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
VISION = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
              image_size=RESOLUTION, patch_size=8, hidden_act="quick_gelu")
TEXT = dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=2,
            max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
            pad_token_id=49407)
PROJECTION = 128
FILLERS = ("a picture of", "an image of", "a drawing of", "a photo of")
POSITION_SYNONYMS = {"in the centre": ("in the center", "in the middle")}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- descriptions


@dataclass(frozen=True)
class Description:
    """A text about a scene and what it claims: `caption` set = the full caption (fits scenes with exactly that
    caption); otherwise each of `shapes` (attribute -> value) must fit some shape, and `background` if given."""

    text: str
    caption: str | None = None
    shapes: tuple[tuple[tuple[str, str], ...], ...] = ()
    background: str | None = None

    def fits(self, scene: Scene) -> bool:
        if self.caption is not None:
            return scene.caption == self.caption
        if self.background is not None and scene.background != self.background:
            return False
        return all(any(all(getattr(s, k) == v for k, v in wanted) for s in scene.shapes) for wanted in self.shapes)


def _article(text: str, rng: np.random.Generator) -> str:
    if text.startswith("a ") and text[2] in "aeiou" and rng.random() < 0.5:
        text = "an " + text[2:]
    return text


def _restyle(text: str, rng: np.random.Generator) -> str:
    """The same meaning in words a user might type: center/middle, 'an', no article, a filler prefix."""
    for phrase, options in POSITION_SYNONYMS.items():
        if phrase in text and rng.random() < 0.3:
            text = text.replace(phrase, options[rng.integers(len(options))])
    text = " and ".join(_article(part, rng) for part in text.split(" and "))
    if text.startswith(("a ", "an ")) and rng.random() < 0.15:
        text = text.split(" ", 1)[1]
    elif rng.random() < 0.1:
        text = f"{FILLERS[rng.integers(len(FILLERS))]} {text}"
    return text


def describe(scene: Scene, rng: np.random.Generator, full: float = 0.4) -> Description:
    """The caption (probability `full`) or a random partial description of the scene."""
    if rng.random() < full:
        return Description(_restyle(scene.caption, rng), caption=scene.caption)
    shapes = list(scene.shapes)
    if len(shapes) == 2 and rng.random() < 0.6:
        shapes = [shapes[rng.integers(2)]]
    phrases, claims = [], []
    for s in shapes:
        keep = {k: rng.random() < p for k, p in (("kind", 0.75), ("colour", 0.75), ("position", 0.4), ("size", 0.25))}
        if not (keep["kind"] or keep["colour"] or keep["position"]):
            keep["kind" if rng.random() < 0.5 else "colour"] = True
        if s.size == "medium":
            keep["size"] = False
        words = ["a"] + [getattr(s, k) for k in ("size", "colour") if keep[k]]
        words.append(s.kind if keep["kind"] else "shape")
        if keep["position"]:
            words.append(POSITION_PHRASES[s.position])
        phrases.append(" ".join(words))
        claims.append(tuple((k, getattr(s, k)) for k in ("kind", "colour", "position", "size") if keep[k]))
    background = scene.background if rng.random() < 0.35 else None
    if len(phrases) == 1 and rng.random() < 0.08:  # the background alone
        phrases, claims, background = [], [], scene.background
    text = " and ".join(phrases)
    if background is not None:
        text = f"{text}, {background} background" if text else f"{background} background"
    return Description(_restyle(text, rng), shapes=tuple(claims), background=background)


def twin(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same scene with one shape of another kind (or, for one shape, sometimes another size): a hard
    negative for its caption that only the shape's outline tells apart (bbox facts are left as they were)."""
    shapes = list(scene.shapes)
    at = int(rng.integers(len(shapes)))
    if len(shapes) == 1 and rng.random() < 0.3:
        size = [z for z in ("small", "medium", "large") if z != shapes[at].size][rng.integers(2)]
        shapes[at] = replace(shapes[at], size=size)
    else:
        kind = [k for k in SHAPES if k != shapes[at].kind][rng.integers(len(SHAPES) - 1)]
        shapes[at] = replace(shapes[at], kind=kind)
    image = draw_scene(shapes, scene.background, scene.image.width)
    return Scene(image, make_caption(shapes, scene.background), shapes, scene.background, scene.seed, scene.index)


def training_words() -> list[str]:
    """Every word the training texts use: their token rows are the only trained ones."""
    words = list(COLOURS) + list(SHAPES) + ["small", "large", "shape", "background", "a", "an", "and", ","]
    words += list(POSITION_PHRASES.values()) + [o for opts in POSITION_SYNONYMS.values() for o in opts]
    words += list(FILLERS)
    return words


# ---------------------------------------------------------------- pictures


def perturb(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random small change of the kind img2img or re-saving makes: blur, tint, noise, JPEG."""
    if rng.random() < 0.6:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.2, 1.3))))
    x = np.asarray(image, np.float32)
    if rng.random() < 0.5:
        x = x * rng.uniform(0.93, 1.07, size=3).astype(np.float32)
    if rng.random() < 0.6:
        x = x + rng.normal(0, rng.uniform(2, 14), size=x.shape).astype(np.float32)
    image = Image.fromarray(np.clip(x, 0, 255).round().astype(np.uint8))
    if rng.random() < 0.5:
        image = _jpeg(image, int(rng.integers(30, 95)))
    return image


def img2img_like(image: Image.Image, seed: int = 0) -> Image.Image:
    """The fixed perturbation the evaluation and the tests use: blur 0.8 px, noise σ 8/255, JPEG quality 60."""
    rng = np.random.default_rng(seed)
    x = np.asarray(image.convert("RGB").filter(ImageFilter.GaussianBlur(0.8)), np.float32)
    x = x + rng.normal(0, 8, size=x.shape)
    return _jpeg(Image.fromarray(np.clip(x, 0, 255).round().astype(np.uint8)), 60)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


# ---------------------------------------------------------------- model and loss


def build_model(seed: int, tokenizer):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=PROJECTION))
    used = sorted({i for w in training_words() for i in tokenizer(w)["input_ids"]})
    with torch.no_grad():
        table = model.text_model.embeddings.token_embedding.weight
        keep = torch.zeros(len(table), dtype=torch.bool)
        keep[used] = True
        table[~keep] = 0.0
    return model


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, fits: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where `fits[t, i]` marks every picture i that text t describes (soft targets)."""
    img = torch.nn.functional.normalize(img, dim=-1)
    txt = torch.nn.functional.normalize(txt, dim=-1)
    logits = scale * txt @ img.T
    t2i = fits / fits.sum(1, keepdim=True)
    i2t = fits.T / fits.T.sum(1, keepdim=True)
    return 0.5 * (-(t2i * logits.log_softmax(1)).sum(1).mean() - (i2t * logits.T.log_softmax(1)).sum(1).mean())


def cosine_lr(step: int, total: int, peak: float, warmup: int, floor: float = 0.05) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


def _embed_images(model, images: list[Image.Image]) -> torch.Tensor:
    return model.visual_projection(model.vision_model(pixel_values=PREPROCESS(images)).pooler_output)


def _embed_texts(model, tokenizer, texts: list[str]) -> torch.Tensor:
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    pooled = model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
    return model.text_projection(pooled)


# ---------------------------------------------------------------- evaluation


class _Live:
    """An Embedder over the model being trained (evaluation during training)."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def embed_images(self, images):
        with torch.no_grad():
            return torch.nn.functional.normalize(_embed_images(self.model, images), dim=-1).numpy()

    def embed_text(self, texts):
        with torch.no_grad():
            return torch.nn.functional.normalize(_embed_texts(self.model, self.tokenizer, texts), dim=-1).numpy()


def evaluate(embedder, seed: int = EVAL_SEED, n: int = 500) -> dict[str, float]:
    """Retrieval figures of any Embedder on `n` scenes of `seed` (see the module docstring)."""
    scenes = SceneGenerator(seed, RESOLUTION).batch(0, n)
    images = embedder.embed_images([s.image for s in scenes])
    texts = embedder.embed_text([s.caption for s in scenes])
    captions = np.array([s.caption for s in scenes])
    t2i = np.argsort(-(texts @ images.T), axis=1)
    own = np.arange(n)[:, None]
    rank_of_own = np.argmax(t2i == own, axis=1)
    same_caption_top5 = [captions[i] in set(captions[t2i[i, :5]]) for i in range(n)]
    i2t = np.argsort(-(images @ texts.T), axis=1)[:, :5]
    i2t_hit = [captions[i] in set(captions[i2t[i]]) for i in range(n)]
    copies = embedder.embed_images([img2img_like(s.image, seed=i) for i, s in enumerate(scenes)])
    c2i = np.argsort(-(copies @ images.T), axis=1)
    copy_rank = np.argmax(c2i == own, axis=1)
    precision, average_precision = [], []
    for colour in COLOURS:
        for kind in SHAPES:
            query = Description(f"a {colour} {kind}", shapes=((("kind", kind), ("colour", colour)),))
            if sum(query.fits(s) for s in scenes) < 5:
                continue
            order = np.argsort(-(images @ embedder.embed_text([query.text])[0]))
            ranked = np.array([query.fits(scenes[i]) for i in order])
            precision.append(ranked[:5].mean())
            hits = np.flatnonzero(ranked)
            average_precision.append(np.mean(np.arange(1, len(hits) + 1) / (hits + 1)))
    return {
        "text_to_image_recall@1": float(np.mean(rank_of_own < 1)),
        "text_to_image_recall@5": float(np.mean(rank_of_own < 5)),
        "text_to_image_same_caption@5": float(np.mean(same_caption_top5)),
        "image_to_text_recall@5": float(np.mean(i2t_hit)),
        "colour_kind_query_precision@5": float(np.mean(precision)),
        "colour_kind_query_mAP": float(np.mean(average_precision)),
        "img2img_original_top1": float(np.mean(copy_rank < 1)),
        "img2img_original_top3": float(np.mean(copy_rank < 3)),
        "scenes": float(n),
    }


def img2img_figures(embedder, ckpt: str, n: int = 100, strengths: tuple[float, ...] = (0.3, 0.5, 0.7),
                    seed: int = EVAL_SEED + 2) -> dict[str, float]:
    """Real img2img children: the demo checkpoint paints `n` held-out captions (Euler, 20 steps, CFG 5), then
    img2img repaints each with its caption at every strength; each child is an image query among the parents
    plus 4n drawn scenes, and the figures are the share whose parent is first / in the top 3. Diffusers'
    pipelines over the checkpoint's components, as `webui.demo.evaluate --engine diffusers` builds them."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    from webui.demo.evaluate import load_components
    from webui.models.tokenizers import load_clip_tokenizer

    unet, vae, text = load_components(ckpt)
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", prediction_type="epsilon", steps_offset=1,
                                       timestep_spacing="leading")
    parts = dict(vae=vae, text_encoder=text, tokenizer=load_clip_tokenizer(), unet=unet, scheduler=scheduler,
                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    txt2img, img2img = StableDiffusionPipeline(**parts), StableDiffusionImg2ImgPipeline(**parts)
    for pipe in (txt2img, img2img):
        pipe.set_progress_bar_config(disable=True)
    prompts = [s.caption for s in SceneGenerator(seed, RESOLUTION).batch(0, n)]
    distractors = [s.image for s in SceneGenerator(seed + 1, RESOLUTION).batch(0, 4 * n)]

    def paint(pipe, offset: int, **kwargs) -> list[Image.Image]:
        out = []
        for b in range(0, n, 25):
            noise = [torch.Generator().manual_seed(offset + i) for i in range(b, min(n, b + 25))]
            with torch.no_grad():
                out += pipe(prompts[b:b + 25], num_inference_steps=20, guidance_scale=5.0, generator=noise,
                            **{k: v[b:b + 25] if isinstance(v, list) else v for k, v in kwargs.items()}).images
        return out

    parents = paint(txt2img, 0, height=RESOLUTION, width=RESOLUTION)
    pool = embedder.embed_images(parents + distractors)
    figures = {}
    for strength in strengths:
        children = embedder.embed_images(paint(img2img, 1000, image=parents, strength=strength))
        ranks = np.array([int(np.argmax(np.argsort(-(pool @ c)) == i)) for i, c in enumerate(children)])
        figures[f"img2img_{strength:g}_parent_top1"] = float(np.mean(ranks < 1))
        figures[f"img2img_{strength:g}_parent_top3"] = float(np.mean(ranks < 3))
    return figures


def _show(figures: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in figures.items() if k != "scenes")


# ---------------------------------------------------------------- training


def train(args) -> int:
    from webui.models.tokenizers import load_clip_tokenizer

    torch.set_num_threads(args.threads)
    t_start = time.time()
    deadline = t_start + args.minutes * 60
    log(f"args: {vars(args)}")
    tokenizer = load_clip_tokenizer()
    model = build_model(args.seed, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    n_rows = int((model.text_model.embeddings.token_embedding.weight.abs().sum(1) > 0).sum())
    log(f"params: {n_params / 1e6:.2f} M in all, {(n_params - 49408 * TEXT['hidden_size']) / 1e6:.2f} M without the "
        f"token table; {n_rows} token rows trained")
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay}, {"params": rest, "weight_decay": 0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    gen = SceneGenerator(args.seed, RESOLUTION, two_shape_prob=args.two_shape)
    rng = np.random.default_rng([args.seed, 0xC11])
    probe = _Live(model, tokenizer)
    total, step, index, losses = args.steps, 0, 0, []
    t0 = last_eval = time.time()
    model.train()
    while step < total:
        if step == 20:
            per = (time.time() - t0) / 20
            fit = int((deadline - time.time() - 120) / per) + step
            if fit < total:
                log(f"{per:.2f}s/step; the budget fits {fit} of {total} planned steps -> plan {fit}")
                total = max(fit, 21)
            else:
                log(f"{per:.2f}s/step; {total} steps take ~{total * per / 60:.0f} min")
        n_twins = int(args.batch * args.twins)
        scenes = gen.batch(index, args.batch - n_twins)
        index += args.batch - n_twins
        scenes += [twin(s, rng) for s in scenes[:n_twins]]
        texts = [describe(s, rng, full=args.full_captions) for s in scenes]
        images = [perturb(s.image, rng) if rng.random() < args.augment else s.image for s in scenes]
        fits = torch.tensor([[t.fits(s) for s in scenes] for t in texts], dtype=torch.float32)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, total, args.lr, args.warmup)
        img, txt = _embed_images(model, images), _embed_texts(model, tokenizer, [t.text for t in texts])
        loss = contrastive_loss(img, txt, model.logit_scale.exp(), fits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        step += 1
        if step % 50 == 0 or step == total:
            el = time.time() - t0
            log(f"step {step}/{total} loss {np.mean(losses[-50:]):.4f} "
                f"temperature {1 / model.logit_scale.exp().item():.4f} "
                f"lr {opt.param_groups[0]['lr']:.2e} ({el:.0f}s, {el / step:.2f}s/step)")
        if time.time() - last_eval > args.eval_minutes * 60 and step < total:
            model.eval()
            log(f"probe (200 scenes of seed {EVAL_SEED + 1}): {_show(evaluate(probe, EVAL_SEED + 1, 200))}")
            model.train()
            last_eval = time.time()
    model.eval()
    train_minutes = (time.time() - t_start) / 60
    meta = {"easel.clip.title": "Easel demo CLIP", "easel.clip.seed": str(args.seed), "easel.clip.steps": str(step),
            "easel.clip.batch": str(args.batch), "easel.clip.train_minutes": f"{train_minutes:.1f}",
            "easel.clip.command": f"python -m webui.demo.train_clip --seed {args.seed} --steps {step}"}
    save_demo_clip(model, PREPROCESS, args.out, meta)
    log(f"saved {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB) after {step} steps, {train_minutes:.1f} min")
    figures = evaluate(DemoClip(args.out), EVAL_SEED, args.eval_n)
    log(f"held-out ({args.eval_n} scenes of seed {EVAL_SEED}): {_show(figures)}")
    meta["easel.clip.evaluation"] = json.dumps({k: round(v, 4) for k, v in figures.items()})
    save_demo_clip(model, PREPROCESS, args.out, meta)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="webui/gallery/demo-clip.safetensors")
    ap.add_argument("--minutes", type=float, default=25.0, help="wall-clock budget, evaluation excluded")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4000, help="planned steps (cut to fit --minutes)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--full-captions", type=float, default=0.4, help="share of full captions; the rest partial")
    ap.add_argument("--augment", type=float, default=0.7, help="share of pictures blurred/noised/re-encoded")
    ap.add_argument("--twins", type=float, default=0.5, help="share of the batch that are twins of other scenes "
                    "(another shape kind or size: hard negatives)")
    ap.add_argument("--two-shape", type=float, default=0.3, help="share of two-shape scenes")
    ap.add_argument("--eval-minutes", type=float, default=5.0, help="probe evaluation interval")
    ap.add_argument("--eval-n", type=int, default=500)
    ap.add_argument("--evaluate", metavar="FILE", help="only evaluate a demo CLIP file")
    ap.add_argument("--img2img-ckpt", metavar="CKPT", help="with --evaluate: also real img2img children painted "
                    "by this checkpoint (models/Stable-diffusion/easel-demo-shapes.safetensors)")
    args = ap.parse_args(argv)
    if args.evaluate:
        torch.set_num_threads(args.threads)
        embedder = DemoClip(args.evaluate)
        figures = evaluate(embedder, EVAL_SEED, args.eval_n)
        if args.img2img_ckpt:
            figures.update(img2img_figures(embedder, args.img2img_ckpt))
        print(json.dumps({k: round(v, 4) for k, v in figures.items()}, indent=1))
        return 0
    return train(args)


if __name__ == "__main__":
    raise SystemExit(main())
