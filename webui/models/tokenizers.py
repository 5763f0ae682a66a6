"""The CLIP tokenizer Easel ships, loaded from package data only (never from a hub).

transformers' CLIPTokenizer skips CLIP's own text cleaning, so `clean_text` applies it
(ftfy + HTML unescape + whitespace collapse) to give the ids CLIP itself would give.
"""
from __future__ import annotations

import html
import re
from functools import lru_cache
from pathlib import Path

import ftfy
from transformers import CLIPTokenizer

TOKENIZER_DIR = Path(__file__).resolve().parent / "configs" / "tokenizer"
BOS_ID = 49406
EOS_ID = 49407

_WHITESPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """CLIP's text normalisation: fix mojibake, unescape HTML twice, collapse whitespace."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return _WHITESPACE.sub(" ", text).strip()


@lru_cache(maxsize=2)
def load_clip_tokenizer(pad_token: str | None = None) -> CLIPTokenizer:
    """The CLIP ViT-L/14 BPE tokenizer from Easel's shipped files.

    `pad_token="!"` gives SDXL's second tokenizer (same table, padded with id 0).
    Cached: the tokenizer is immutable once built, and building it parses a 1 MB vocab.
    """
    kwargs = {"local_files_only": True}
    if pad_token is not None:
        kwargs["pad_token"] = pad_token
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), **kwargs)


def encode(text: str, tokenizer: CLIPTokenizer | None = None) -> list[int]:
    """Token ids for `text` after CLIP's cleaning, without BOS/EOS and without truncation."""
    tok = tokenizer or load_clip_tokenizer()
    return tok(clean_text(text), add_special_tokens=False, truncation=False)["input_ids"]
