"""Image and text embeddings for content search: one vector space for pictures and words.

Two kinds of model, both a transformers `CLIPModel` behind the same small interface (`Embedder`):

- `TransformersClip`: a user's CLIP folder, `models/CLIP/<name>/` (`save_pretrained` output: config.json,
  weights, tokenizer and preprocessor files), loaded offline.
- `DemoClip`: Easel's own tiny CLIP trained on the demo scenes (`webui/demo/train_clip.py`), shipped as one file,
  `demo-clip.safetensors`: the state dict, its `CLIPConfig` and its preprocessing in the metadata, and only
  the token-embedding rows the training captions use (the other 49 000 rows of the table are zero).

`find_embedder` picks one: the first usable folder in `models/CLIP/`, else the demo model, else None (content
search is then off; text search does not need it). `embed_missing` is one step of the background work: embed
the next few indexed images that have no vector from the model yet.

Pictures are preprocessed with PIL and numpy from the preprocessor config (resize the short side, centre crop,
normalise), so no torchvision is needed. Vectors come back as float32 numpy arrays of unit length.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError

from webui.gallery.index import GalleryIndex
from webui.models.checkpoint_io import read_safetensors_metadata, read_state_dict
from webui.models.errors import ModelError
from webui.models.tokenizers import clean_text, load_clip_tokenizer

log = logging.getLogger(__name__)

DEMO_CLIP_PATH = Path(__file__).resolve().parent / "demo-clip.safetensors"
DEMO_FORMAT = "easel-demo-clip/1"
# metadata keys of the demo file
META_FORMAT, META_CONFIG, META_PREPROCESS = "easel.clip.format", "easel.clip.config", "easel.clip.preprocess"
# the demo file keeps only the used rows of the token table: their ids and values
SPARSE_IDS, SPARSE_ROWS = "easel.token_ids", "easel.token_rows"
TOKEN_TABLE = "text_model.embeddings.token_embedding.weight"

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@runtime_checkable
class Embedder(Protocol):
    """What the gallery needs from an embedding model. `name` is stored with every vector, so vectors of two
    models (or two versions of one) are never compared."""

    name: str
    dim: int

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """[n, dim] float32, each row of unit length."""
        ...

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """[n, dim] float32, each row of unit length."""
        ...


@dataclass(frozen=True)
class Preprocess:
    """CLIP's image preprocessing: resize the short side, centre-crop, scale to [0, 1], normalise."""

    size: int = 224  # short side after resizing
    crop: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    resample: int = Image.Resampling.BICUBIC

    @classmethod
    def from_config(cls, config: dict[str, Any], image_size: int) -> Preprocess:
        """From a transformers `preprocessor_config.json` (CLIPImageProcessor's keys)."""
        def side(value: Any, default: int) -> int:
            if isinstance(value, dict):
                value = value.get("shortest_edge") or value.get("height") or value.get("width")
            return int(value) if value else default

        size = side(config.get("size"), image_size) if config.get("do_resize", True) else image_size
        crop = side(config.get("crop_size"), size) if config.get("do_center_crop", True) else size
        mean, std = OPENAI_MEAN, OPENAI_STD
        if config.get("do_normalize", True):
            mean = tuple(float(v) for v in config.get("image_mean", mean))
            std = tuple(float(v) for v in config.get("image_std", std))
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        return cls(size, crop, mean, std, int(config.get("resample", Image.Resampling.BICUBIC)))

    def array(self, image: Image.Image) -> np.ndarray:
        """One picture as a normalised float32 [3, crop, crop] array."""
        image = image.convert("RGB")
        w, h = image.size
        long = int(self.size * max(w, h) / min(w, h))  # as transformers computes it
        resized = (self.size, long) if w <= h else (long, self.size)
        resized = (max(self.crop, resized[0]), max(self.crop, resized[1]))
        if resized != (w, h):
            image = image.resize(resized, self.resample)
            w, h = resized
        left, top = (w - self.crop) // 2, (h - self.crop) // 2
        if (w, h) != (self.crop, self.crop):
            image = image.crop((left, top, left + self.crop, top + self.crop))
        x = np.asarray(image, np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return x.transpose(2, 0, 1)

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.array(im) for im in images]))


class ClipEmbedder:
    """A `CLIPModel` with its tokenizer and preprocessing; the code both embedders share.

    One lock serialises inference, so one instance may be used from a background thread while a request
    thread embeds a query."""

    batch_size = 32

    def __init__(self, name: str, model: Any, tokenizer: Any, preprocess: Preprocess, device: str | torch.device):
        self.name = name
        self.device = torch.device(device)
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.dim = int(model.config.projection_dim)
        self.max_tokens = min(int(getattr(tokenizer, "model_max_length", 77) or 77),
                              int(model.config.text_config.max_position_embeddings))
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, dim={self.dim})"

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = []
        for start in range(0, len(images), self.batch_size):
            pixels = self.preprocess(images[start:start + self.batch_size])
            with self._lock, torch.no_grad():
                pooled = self.model.vision_model(pixel_values=pixels.to(self.device)).pooler_output
                out.append(self.model.visual_projection(pooled))
        return _unit_rows(out, self.dim)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = [clean_text(t) for t in texts[start:start + self.batch_size]]
            with self._lock, torch.no_grad():  # a Rust-backed tokenizer must not be called from two threads at once
                tokens = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_tokens,
                                        return_tensors="pt")
                pooled = self.model.text_model(input_ids=tokens["input_ids"].to(self.device),
                                               attention_mask=tokens["attention_mask"].to(self.device)).pooler_output
                out.append(self.model.text_projection(pooled))
        return _unit_rows(out, self.dim)


def _unit_rows(chunks: list[torch.Tensor], dim: int) -> np.ndarray:
    if not chunks:
        return np.zeros((0, dim), np.float32)
    x = torch.cat(chunks).float().cpu().numpy()
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class TransformersClip(ClipEmbedder):
    """A transformers CLIP folder, e.g. `models/CLIP/clip-vit-base-patch32/` written by
    `CLIPModel.save_pretrained` + `CLIPProcessor.save_pretrained`. Read offline only. A folder without
    tokenizer files uses Easel's shipped CLIP tokenizer (the same BPE table as OpenAI's CLIP)."""

    def __init__(self, folder: Path, device: str | torch.device = "cpu"):
        from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

        folder = Path(folder)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise ModelError(f"CLIP folder {folder.name}: no config.json (save the model with save_pretrained)")
        try:
            config = json.loads(config_file.read_text("utf-8"))
        except (OSError, ValueError) as e:
            raise ModelError(f"CLIP folder {folder.name}: config.json is not readable JSON ({e})") from e
        if not isinstance(config, dict) or config.get("model_type") != "clip":
            kind = config.get("model_type") if isinstance(config, dict) else None
            raise ModelError(f"CLIP folder {folder.name}: config.json describes a {kind!r} model, not a CLIPModel "
                             "(model_type 'clip', with a text and a vision tower)")
        weights = [folder / f for f in WEIGHT_FILES if (folder / f).is_file()]
        if not weights and not any(folder.glob("*.safetensors.index.json")):
            raise ModelError(f"CLIP folder {folder.name}: no weights ({' or '.join(WEIGHT_FILES)})")
        try:
            model = CLIPModel.from_pretrained(str(folder), config=CLIPConfig.from_dict(config), local_files_only=True)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as e:
            raise ModelError(f"CLIP folder {folder.name}: cannot load the model ({_first_line(e)})") from e
        if any(folder.glob("vocab.json")) or (folder / "tokenizer.json").is_file():
            try:
                tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
            except (OSError, ValueError) as e:
                raise ModelError(f"CLIP folder {folder.name}: cannot load its tokenizer ({_first_line(e)})") from e
        else:
            tokenizer = load_clip_tokenizer()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        processor_file = folder / "preprocessor_config.json"
        try:
            processor = json.loads(processor_file.read_text("utf-8")) if processor_file.is_file() else {}
        except (OSError, ValueError) as e:
            raise ModelError(f"CLIP folder {folder.name}: preprocessor_config.json is not readable ({e})") from e
        preprocess = Preprocess.from_config(processor, int(model.config.vision_config.image_size))
        self.folder = folder
        super().__init__(f"clip:{folder.name}:{_folder_fingerprint(folder, weights)}", model, tokenizer, preprocess,
                         device)


class DemoClip(ClipEmbedder):
    """Easel's demo embedding model from its one file (see README.md in this folder)."""

    def __init__(self, path: Path = DEMO_CLIP_PATH, device: str | torch.device = "cpu"):
        path = Path(path)
        model, preprocess = load_demo_clip(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
        self.path = path
        super().__init__(f"easel-demo-clip:{digest}", model, load_clip_tokenizer(), preprocess, device)


def load_demo_clip(path: Path) -> tuple[Any, Preprocess]:
    """The CLIPModel and preprocessing stored in a demo-clip file (see `save_demo_clip`)."""
    from transformers import CLIPConfig, CLIPModel

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path.name}: no such file")
    meta = read_safetensors_metadata(path)
    if meta.get(META_FORMAT) != DEMO_FORMAT:
        raise ModelError(f"{path.name}: not an Easel demo CLIP file (format {meta.get(META_FORMAT)!r})")
    sd = read_state_dict(path)
    try:
        config = CLIPConfig.from_dict(json.loads(meta[META_CONFIG]))
        preprocess = Preprocess(**_preprocess_args(json.loads(meta[META_PREPROCESS])))
        ids, rows = sd.pop(SPARSE_IDS).long(), sd.pop(SPARSE_ROWS).float()
        table = torch.zeros(config.text_config.vocab_size, rows.shape[1])
        table[ids] = rows
        sd[TOKEN_TABLE] = table
        model = CLIPModel(config)
        missing, unexpected = model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise KeyError(f"tensors missing: {missing[:3]}, unexpected: {unexpected[:3]}")
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as e:
        raise ModelError(f"{path.name}: damaged demo CLIP file ({_first_line(e)})") from e
    return model.eval(), preprocess


def save_demo_clip(model: Any, preprocess: Preprocess, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a CLIPModel as one small file: fp16 tensors, only the non-zero token rows, config in the metadata."""
    from safetensors.torch import save_file

    sd = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    table = sd.pop(TOKEN_TABLE)
    ids = torch.nonzero(table.abs().sum(1) > 0).flatten()
    sd[SPARSE_IDS] = ids.to(torch.int32)
    sd[SPARSE_ROWS] = table[ids]
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    meta = {META_FORMAT: DEMO_FORMAT, META_CONFIG: model.config.to_json_string(use_diff=False),
            META_PREPROCESS: json.dumps(_preprocess_fields(preprocess))}
    meta.update(metadata or {})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata=meta)


def _preprocess_fields(p: Preprocess) -> dict[str, Any]:
    return {"size": p.size, "crop": p.crop, "mean": list(p.mean), "std": list(p.std), "resample": p.resample}


def _preprocess_args(d: dict[str, Any]) -> dict[str, Any]:
    return {"size": int(d["size"]), "crop": int(d["crop"]), "mean": tuple(d["mean"]), "std": tuple(d["std"]),
            "resample": int(d["resample"])}


def _folder_fingerprint(folder: Path, weights: list[Path]) -> str:
    """Cheap identity of a CLIP folder (config + weight sizes): replaced weights give new vectors a new name."""
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for w in weights:
        h.update(f"{w.name}:{w.stat().st_size}".encode())
    return h.hexdigest()[:10]


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def clip_folders(models_dir: Path) -> list[Path]:
    """The candidate folders in `models/CLIP/`, sorted; hidden ones and links leading outside are skipped."""
    root = Path(models_dir) / "CLIP"
    if not root.is_dir():
        return []
    real_root = root.resolve()
    found = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if not entry.resolve().is_relative_to(real_root):
            log.warning("gallery: not following %s, which leads outside models/CLIP", entry)
            continue
        found.append(entry)
    return found


def find_embedder(models_dir: Path, device: str | torch.device = "cpu",
                  demo_path: Path = DEMO_CLIP_PATH) -> Embedder | None:
    """The first CLIP folder in `models/CLIP/` that loads, else Easel's demo model, else None.

    A folder that cannot be used is logged and skipped: a broken download must not turn content search off."""
    for folder in clip_folders(models_dir):
        try:
            return TransformersClip(folder, device)
        except ModelError as e:
            log.warning("gallery: skipping %s: %s", folder, e)
    if Path(demo_path).is_file():
        try:
            return DemoClip(demo_path, device)
        except ModelError as e:
            log.warning("gallery: the demo embedding model cannot be used: %s", e)
    return None


def embed_missing(index: GalleryIndex, embedder: Embedder, limit: int = 16, skip: set[int] | None = None) -> int:
    """Embed up to `limit` indexed images that have no vector from `embedder` yet and store the vectors: one
    step of the background worker, which calls it until it returns 0. Returns how many vectors were stored.

    A file that cannot be read is logged and its id added to `skip` (keep the set between calls), so it is not
    tried again and again; an image deleted meanwhile is simply left out."""
    skip = set() if skip is None else skip
    wanted = [i for i in index.missing_vectors(embedder.name, limit + len(skip)) if i not in skip][:limit]
    ids, pictures = [], []
    for row_id in wanted:
        row = index.get(row_id)
        if row is None:
            continue
        try:
            with Image.open(row.path) as image:
                image.draft("RGB", (512, 512))  # JPEG only: decode at a reduced size, CLIP needs no more
                pictures.append(image.convert("RGB"))
            ids.append(row_id)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            log.warning("gallery: cannot embed %s: %s", row.path, e)
            skip.add(row_id)
    if not pictures:
        return 0
    vectors = embedder.embed_images(pictures)
    stored = 0
    for row_id, vector in zip(ids, vectors):
        try:
            index.put_vector(row_id, embedder.name, vector)
            stored += 1
        except KeyError:  # deleted while we were embedding it
            pass
    return stored
