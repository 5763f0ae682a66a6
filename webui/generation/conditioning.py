"""Prompts to text-encoder conditioning, with A1111's semantics.

- Emphasis `(a)`, `[a]`, `(a:1.3)`: each token's embedding is scaled by its weight, then the whole
  chunk is rescaled so its mean equals the unweighted mean (A1111's "mean restore").
- Long prompts: tokens are split into chunks of 75 (+BOS/EOS = 77), each encoded on its own and
  concatenated along the sequence axis. A chunk that fills up moves the words after the last comma
  (if within 20 tokens) to the next chunk; `BREAK` ends a chunk early.
- Prompt editing and alternation: `webui.prompts` turns a prompt into a per-step schedule; every
  distinct text is encoded once, and `ScheduledConditioning.at(step)` picks the tensors for a step.
  What is kept is bounded in bytes (cachetools' LRU, COND_CACHE_BYTES per cache): a prompt alternating
  between hundreds of long texts re-encodes some of them rather than holding all of them.
- Positive and negative conditioning of different lengths are padded with the encoding of an
  empty chunk, as A1111 does, so they can be batched for classifier-free guidance.
- SDXL (`DualPromptEncoder`): both text encoders see the same chunks; their penultimate hidden
  states (no final norm) are concatenated along the width, and the second encoder's projected
  pooled output of the first chunk conditions the UNet too. An empty negative prompt is all zeros,
  as in A1111 and diffusers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from cachetools import LRUCache
from transformers import CLIPTextModel, CLIPTokenizer

from webui.models.embeddings import Embedding, split_on_embeddings
from webui.models.tokenizers import clean_text
from webui.prompts import get_learned_conditioning_prompt_schedules, parse_prompt_attention, prompt_schedule_at

CHUNK_TOKENS = 75
COMMA_BACKTRACK = 20
COND_CACHE_BYTES = 128 * 2**20  # per cache (an encoder's texts; a schedule's steps, each side)


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, tuple):
        return sum(_nbytes(v) for v in value) or 1
    return 1


def tensor_cache() -> LRUCache:
    """A cache of tensors (or tuples of them) holding at most COND_CACHE_BYTES."""
    return LRUCache(maxsize=COND_CACHE_BYTES, getsizeof=_nbytes)


def remember(cache: LRUCache, key: Any, value: Any) -> Any:
    """Keep `value` under `key` if it fits the cache at all (one bigger than the whole cache is used once)."""
    try:
        cache[key] = value
    except ValueError:
        pass
    return value


@dataclass
class PromptChunk:
    tokens: list[int]
    weights: list[float]
    # textual-inversion vectors: (offset of the first placeholder token in `tokens`, [n, width])
    fixes: list[tuple[int, torch.Tensor]] = field(default_factory=list)


class PromptEncoder:
    """Encodes prompt texts for one loaded text encoder; caches each distinct text."""

    zero_empty_negative = False  # SD1/SD2 encode an empty negative prompt like any other text

    def __init__(self, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, clip_skip: int = 1,
                 embeddings: dict[str, Embedding] | None = None, layer: str = "last",
                 device: torch.device | None = None):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        # where the encoder runs; with --lowvram its own parameters sit on the meta device
        self.device = device if device is not None else text_encoder.device
        self.clip_skip = clip_skip
        self.layer = layer  # "last" (SD1/SD2, clip skip applies) | "penultimate" (SDXL: raw hidden state)
        width = text_encoder.config.hidden_size
        # only embeddings made for this text encoder's width can be used; others are plain words
        self.embeddings = {n: e.for_width(width) for n, e in (embeddings or {}).items() if e.for_width(width) is not None}
        self.used_embeddings: set[str] = set()
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.comma = tokenizer.convert_tokens_to_ids(",</w>")
        self._cache = tensor_cache()  # text -> (conditioning, pooled or None)

    # -- tokens --------------------------------------------------------------------------------
    def tokenize_fragments(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        cleaned = [clean_text(t) for t in texts]
        return self.tokenizer(cleaned, add_special_tokens=False, truncation=False)["input_ids"]

    def _pieces(self, parsed: list) -> list[list[tuple[list[int], str | None]]]:
        """Per parsed fragment: its token runs, each either plain tokens or one embedding's name."""
        names = list(self.embeddings)
        split = [split_on_embeddings(text, names) if names else [(text, None)] for text, _ in parsed]
        plain = [piece for parts in split for piece, emb in parts if emb is None]
        ids = iter(self.tokenize_fragments(plain))
        return [[(next(ids), None) if emb is None else ([], emb) for _, emb in parts] for parts in split]

    def chunks(self, text: str) -> list[PromptChunk]:
        """Split a prompt into weighted 75-token chunks (without BOS/EOS/padding)."""
        parsed = parse_prompt_attention(text)
        pieces = self._pieces(parsed)
        chunks: list[PromptChunk] = []
        chunk = PromptChunk([], [])
        last_comma = -1

        def flush() -> None:
            nonlocal chunk, last_comma
            chunks.append(chunk)
            chunk, last_comma = PromptChunk([], []), -1

        for (text_piece, weight), runs in zip(parsed, pieces):
            if text_piece == "BREAK" and weight == -1:
                flush()
                continue
            for tokens, emb in runs:
                if emb is not None:  # an embedding's vectors never straddle two chunks
                    vectors = self.embeddings[emb]
                    if len(chunk.tokens) + len(vectors) > CHUNK_TOKENS:
                        flush()
                    chunk.fixes.append((len(chunk.tokens), vectors))
                    chunk.tokens.extend([self.pad] * len(vectors))
                    chunk.weights.extend([weight] * len(vectors))
                    self.used_embeddings.add(emb)
                    continue
                for tok in tokens:
                    if tok == self.comma:
                        last_comma = len(chunk.tokens)
                    elif (len(chunk.tokens) == CHUNK_TOKENS and last_comma != -1
                          and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK
                          and all(offset < last_comma for offset, _ in chunk.fixes)):
                        # keep the words after the last comma together in the next chunk
                        split = last_comma + 1
                        moved = PromptChunk(chunk.tokens[split:], chunk.weights[split:])
                        chunk.tokens, chunk.weights = chunk.tokens[:split], chunk.weights[:split]
                        flush()
                        chunk = moved
                    if len(chunk.tokens) == CHUNK_TOKENS:
                        flush()
                    chunk.tokens.append(tok)
                    chunk.weights.append(weight)
        if chunk.tokens or not chunks:
            flush()
        return chunks

    # -- embeddings ----------------------------------------------------------------------------
    def _encode_chunk(self, chunk: PromptChunk) -> tuple[torch.Tensor, torch.Tensor | None]:
        pad = CHUNK_TOKENS - len(chunk.tokens)
        ids = [self.bos] + chunk.tokens + [self.eos] + [self.pad] * pad
        weights = [1.0] + chunk.weights + [1.0] * (pad + 1)
        ids_t = torch.tensor([ids], device=self.device)
        z, pooled = self._encode_with_vectors(ids_t, chunk.fixes) if chunk.fixes else self._run_text_encoder(ids_t)
        w = torch.tensor(weights, device=z.device, dtype=z.dtype)[None, :, None]
        if bool((w != 1).any()):
            original_mean = z.mean()
            z = z * w
            z = z * (original_mean / z.mean())
        return z, pooled

    def _run_text_encoder(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(hidden states the UNet attends to, projected pooled output if the encoder has one)."""
        model = self.text_encoder
        if self.layer == "penultimate":  # SDXL ignores clip skip, as A1111 does by default
            out = model(ids, output_hidden_states=True)
            return out.hidden_states[-2], getattr(out, "text_embeds", None)
        layers = model.config.num_hidden_layers
        if self.clip_skip > layers:
            raise ValueError(f"clip_skip: this checkpoint's text encoder has {layers} layers (got {self.clip_skip})")
        if self.clip_skip > 1:
            out = model(ids, output_hidden_states=True)
            return getattr(model, "text_model", model).final_layer_norm(out.hidden_states[-self.clip_skip]), None
        return model(ids).last_hidden_state, None

    def _encode_with_vectors(self, ids: torch.Tensor, fixes: list[tuple[int, torch.Tensor]]):
        """The text encoder's pass with some token embeddings replaced by textual-inversion vectors.

        CLIPTextModel takes token ids only, so a forward hook (PyTorch's own extension point; removed
        right after) swaps the vectors into the token-embedding output for this one call."""
        token_embedding = getattr(self.text_encoder, "text_model", self.text_encoder).embeddings.token_embedding

        def put_vectors(module, inputs, output):
            output = output.clone()
            for offset, vectors in fixes:  # +1: the BOS token comes first
                output[0, offset + 1: offset + 1 + len(vectors)] = vectors.to(output.device, output.dtype)
            return output

        handle = token_embedding.register_forward_hook(put_vectors)
        try:
            return self._run_text_encoder(ids)
        finally:
            handle.remove()

    def encode_for_training(self, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(conditioning [1, 77·n, width], pooled or None) like `encode` and `pooled`, without the cache and
        with gradients flowing to the embeddings' vectors (textual-inversion training;
        webui/training/textual_inversion.py)."""
        parts = [self._encode_chunk(c) for c in self.chunks(text)]
        return torch.cat([z for z, _ in parts], dim=1), parts[0][1]

    @torch.no_grad()
    def _encoded(self, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        found = self._cache.get(text)
        if found is None:
            parts = [self._encode_chunk(c) for c in self.chunks(text)]
            # A1111: the pooled output is the first chunk's
            found = remember(self._cache, text, (torch.cat([z for z, _ in parts], dim=1), parts[0][1]))
        return found

    def encode(self, text: str) -> torch.Tensor:
        """[1, 77·n, width] conditioning for one prompt text."""
        return self._encoded(text)[0]

    def pooled(self, text: str) -> torch.Tensor | None:
        """[1, projection] pooled text embedding (encoders with a projection only), else None."""
        return self._encoded(text)[1]

    @torch.no_grad()
    def empty_chunk(self) -> torch.Tensor:
        return self.encode("")[:, : CHUNK_TOKENS + 2]


class DualPromptEncoder:
    """SDXL's two text encoders behind PromptEncoder's interface: same chunks, features side by side."""

    zero_empty_negative = True

    def __init__(self, first: PromptEncoder, second: PromptEncoder):
        self.first, self.second = first, second

    @property
    def used_embeddings(self) -> set[str]:
        return self.first.used_embeddings | self.second.used_embeddings

    @torch.no_grad()
    def encode(self, text: str) -> torch.Tensor:
        a, b = self.first.encode(text), self.second.encode(text)
        if a.shape[1] != b.shape[1]:  # both see the same tokens; this would be a bug, not bad input
            raise RuntimeError(f"the SDXL text encoders chunked the prompt differently ({a.shape[1]} vs {b.shape[1]})")
        return torch.cat([a, b.to(a.dtype)], dim=-1)

    @torch.no_grad()
    def pooled(self, text: str) -> torch.Tensor | None:
        return self.second.pooled(text)

    def encode_for_training(self, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`encode` and `pooled` together, with gradients flowing to both halves of an SDXL embedding."""
        (a, _), (b, pooled) = self.first.encode_for_training(text), self.second.encode_for_training(text)
        return torch.cat([a, b.to(a.dtype)], dim=-1), pooled

    @torch.no_grad()
    def empty_chunk(self) -> torch.Tensor:
        return self.encode("")[:, : CHUNK_TOKENS + 2]


def pad_to_length(cond: torch.Tensor, length: int, empty: torch.Tensor) -> torch.Tensor:
    """Append empty-chunk encodings until `cond` has `length` tokens (a multiple of 77)."""
    missing = (length - cond.shape[1]) // empty.shape[1]
    if missing <= 0:
        return cond
    return torch.cat([cond] + [empty.to(cond.dtype)] * missing, dim=1)


class ScheduledConditioning:
    """Per-step conditioning for a batch of prompts (prompt editing and alternation resolved).

    `negative=True` marks the negative side: with SDXL an all-empty negative prompt gives zeros."""

    def __init__(self, encoder: PromptEncoder | DualPromptEncoder, prompts: list[str], steps: int,
                 negative: bool = False, hires_steps: int | None = None):
        self.encoder = encoder
        self.schedules = get_learned_conditioning_prompt_schedules(prompts, steps, hires_steps)
        self.is_static = all(len(s) == 1 for s in self.schedules)
        self.negative = negative
        self._by_step = tensor_cache()  # (texts…, length) -> the batch's conditioning
        self._pooled = tensor_cache()  # texts -> the batch's pooled embeddings (or None)

    def _zeroed(self, texts: tuple[str, ...]) -> bool:
        return self.negative and self.encoder.zero_empty_negative and all(t == "" for t in texts)

    def pooled_at(self, step: int) -> torch.Tensor | None:
        """[batch, projection] pooled embeddings at `step` (SDXL), or None for models without them."""
        texts = self.texts_at(step)
        if texts not in self._pooled:
            pooled = [self.encoder.pooled(t) for t in texts]
            out = None if any(p is None for p in pooled) else torch.cat(pooled, dim=0)
            return remember(self._pooled, texts,
                            torch.zeros_like(out) if out is not None and self._zeroed(texts) else out)
        return self._pooled[texts]

    def texts_at(self, step: int) -> tuple[str, ...]:
        """The prompt texts in force at 0-based `step` (webui.prompts.prompt_schedule_at's rule)."""
        return tuple(prompt_schedule_at(schedule, step) for schedule in self.schedules)

    def at(self, step: int, length: int | None = None) -> torch.Tensor:
        texts = self.texts_at(step)
        key = texts + (str(length),)
        found = self._by_step.get(key)
        if found is None:
            conds = [self.encoder.encode(t) for t in texts]
            target = max([c.shape[1] for c in conds] + [length or 0])
            empty = self.encoder.empty_chunk()
            padded = [pad_to_length(c, target, empty) for c in conds]
            out = padded[0] if len(padded) == 1 else torch.cat(padded, dim=0)  # one prompt: no copy
            found = remember(self._by_step, key, torch.zeros_like(out) if self._zeroed(texts) else out)
        return found

    def max_length(self, steps: int) -> int:
        """The longest conditioning over all steps (so positive and negative can be padded alike)."""
        lengths = {self.encoder.encode(t).shape[1] for s in self.schedules for _, t in s}
        return max(lengths)
