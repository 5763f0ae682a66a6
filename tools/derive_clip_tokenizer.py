"""Derive the CLIP ViT-L/14 tokenizer files that Easel ships from CLIP's BPE table.

The BPE table (`bpe_simple_vocab_16e6.txt.gz`) ships inside the `open_clip_torch` wheel on PyPI;
this script turns it into the `vocab.json` / `merges.txt` pair that transformers' CLIPTokenizer
reads. It is run once by a developer, and its output is committed under
`webui/models/configs/tokenizer/`, so Easel never needs the network at run time:

    pip download --no-deps -d /tmp/oc open_clip_torch==3.3.0
    unzip -o /tmp/oc/*.whl 'open_clip/bpe_simple_vocab_16e6.txt.gz' -d /tmp/oc
    python tools/derive_clip_tokenizer.py /tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz
"""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "webui" / "models" / "configs" / "tokenizer"
N_MERGES = 49152 - 256 - 2  # CLIP's vocabulary is 49,408 = 2*256 byte tokens + 48,894 merges + 2 specials


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, the order CLIP's vocab starts with."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def derive(bpe_gz: Path) -> None:
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(vocab)} tokens, {len(merges)} merges)")


if __name__ == "__main__":
    derive(Path(sys.argv[1]))
