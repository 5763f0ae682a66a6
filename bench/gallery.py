"""The gallery index at scale: insert rate, text search, vector and hash search latency, scan rate, size.

    python bench/gallery.py [--rows 100000] [--vectors 100000] [--dim 512] [--images 10000] [--image-size 128]
                            [--queries 30] [--keep DIR]

1. `--rows` synthetic rows (prompts drawn from a 4 000-word vocabulary with a Zipf law, 20 owners, 30 models,
   12 samplers, LoRAs on a third, a year of dates) go in through `put_many` in batches of 1 000: rows/s.
2. Text search: p50/p95 of `search()` (count + one page of 50) per kind of query, `--queries` of each.
3. Vectors: `--vectors` random `--dim`-wide float32 embeddings stored, then exact cosine top-20 (all owners,
   and one owner's images); the first query, which loads the matrix from SQLite, is reported apart.
4. Perceptual hashes: top-20 Hamming neighbours over all rows (hashing the query picture included).
5. Scan: `--images` small pictures (4 in 5 PNG with an A1111 infotext, 1 in 5 JPEG with it in EXIF) written
   in A1111's folder layout, then `scan()` with 2 reader threads: images/s; a second, no-change scan too.

Prints a markdown table. Everything is written under a temporary folder (or --keep DIR) and removed after.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from webui.gallery import GalleryIndex, ImageRecord  # noqa: E402
from webui.images.infotext import create_infotext, parse_infotext  # noqa: E402
from webui.images.store import png_bytes  # noqa: E402

SAMPLERS = ["Euler a", "Euler", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "DDIM", "UniPC", "Heun", "LMS", "DPM2",
            "DPM2 a", "LCM"]
KINDS = ["txt2img-images"] * 6 + ["img2img-images"] * 2 + ["txt2img-grids", "extras-images"]
SIZES = [(512, 512), (512, 768), (768, 512), (1024, 1024), (832, 1216), (640, 640)]
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "shi", "po", "ve", "da", "gri", "mon", "sel", "tor", "bal", "quin",
             "fe", "zu", "an", "or", "el", "is", "um", "ar"]


def vocabulary(size: int, rng: random.Random) -> list[str]:
    words: dict[str, None] = {}
    while len(words) < size:
        words["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))] = None
    return list(words)


class Corpus:
    """Synthetic infotexts: word ranks follow a Zipf law, as tags in real prompts do."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        self.words = vocabulary(4000, self.rng)
        ranks = np.arange(1, len(self.words) + 1)
        weights = 1.0 / ranks ** 1.07
        self.cumulative = np.cumsum(weights / weights.sum())
        self.np_rng = np.random.default_rng(seed)
        self.models = [f"{w}_v{i % 5 + 1}" for i, w in enumerate(vocabulary(30, random.Random(seed + 1)))]
        self.loras = [f"{w}_lora" for w in vocabulary(50, random.Random(seed + 2))]
        self.owners = [f"user{i:02d}" for i in range(20)]

    def draw_words(self, count: int) -> list[str]:
        picks = np.searchsorted(self.cumulative, self.np_rng.random(count))
        return [self.words[min(i, len(self.words) - 1)] for i in picks]

    def infotext(self, seed: int) -> str:
        rng = self.rng
        words = self.draw_words(rng.randint(12, 40))
        chunks = [" ".join(words[i:i + rng.randint(1, 3)]) for i in range(0, len(words), 3)]
        loras = rng.sample(self.loras, rng.randint(1, 2)) if rng.random() < 0.33 else []
        prompt = ", ".join(chunks + [f"<lora:{name}:0.8>" for name in loras])
        width, height = rng.choice(SIZES)
        params = {"Steps": rng.choice([20, 25, 30, 40]), "Sampler": rng.choice(SAMPLERS), "CFG scale": 7,
                  "Seed": seed, "Size": f"{width}x{height}", "Model hash": f"{rng.getrandbits(40):010x}",
                  "Model": rng.choice(self.models),
                  "Lora hashes": ", ".join(f"{n}: {rng.getrandbits(48):012x}" for n in loras) or None}
        return create_infotext(prompt, ", ".join(self.draw_words(rng.randint(3, 10))), params)


def percentiles(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered) * 1000, ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return percentiles(times)


def mib(path: Path) -> float:
    """The database file's size once its write-ahead log is folded in."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size / 2**20


def picture(seed: int, size: int) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x, y = rng.randrange(size), rng.randrange(size)
        box = [x, y, x + rng.randrange(size // 8, size // 2), y + rng.randrange(size // 8, size // 2)]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--queries", type=int, default=30, help="repeats of each kind of text query")
    parser.add_argument("--keep", type=Path, help="work in this folder and leave it")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="easel-gallery-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results: list[tuple[str, str]] = []
    try:
        run(args, work, results)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nGallery index, {args.rows:,} rows ({os.cpu_count()} CPUs)\n")
    print("| measure | value |\n|---|---|")
    for name, value in results:
        print(f"| {name} | {value} |")


def run(args: argparse.Namespace, work: Path, results: list[tuple[str, str]]) -> None:
    corpus = Corpus()
    database = work / "gallery.sqlite3"
    index = GalleryIndex(database)
    rng = corpus.rng
    start_time = time.time() - 365 * 86400
    records: list[ImageRecord] = []
    print(f"building {args.rows:,} synthetic infotexts …", file=sys.stderr)
    for n in range(args.rows):
        width, height = rng.choice(SIZES)
        kind = rng.choice(KINDS)
        records.append(ImageRecord(
            Path(f"/bench/outputs/{kind}/{n:07d}.png"), rng.choice(corpus.owners), kind,
            start_time + n * 365 * 86400 / args.rows, width, height, parse_infotext(corpus.infotext(n)), "parameters",
            rng.getrandbits(64) - (1 << 63), rng.getrandbits(64) - (1 << 63), n, 1000))
    started = time.perf_counter()
    ids: list[int] = []
    for at in range(0, len(records), 1000):
        ids.extend(index.put_many(records[at:at + 1000]))
    elapsed = time.perf_counter() - started
    results.append(("insert (put_many, batches of 1 000)", f"{args.rows / elapsed:,.0f} rows/s ({elapsed:.1f} s)"))
    for row_id in rng.sample(ids, len(ids) // 50):
        index.star(row_id)
    results.append(("database size, rows + FTS", f"{mib(database):.1f} MiB"))

    sample_prompts = [records[rng.randrange(len(records))].parameters["Prompt"] for _ in range(args.queries)]
    common, middle, rare = corpus.words[:5], corpus.words[100:150], corpus.words[2000:2400]

    def phrase(i: int) -> str:
        words = sample_prompts[i % len(sample_prompts)].split(",")[0].split()
        return f'"{" ".join(words[:2])}"'

    day = time.strftime("%Y-%m-%d", time.localtime(start_time + 200 * 86400))
    kinds: list[tuple[str, Callable[[int], str], dict]] = [
        ("common word (in ~half the rows)", lambda i: common[i % 5], {}),
        ("mid-frequency word", lambda i: middle[i % 50], {}),
        ("rare word", lambda i: rare[i % 400], {}),
        ("two words", lambda i: f"{common[i % 5]} {middle[i % 50]}", {}),
        ("phrase", phrase, {}),
        ("common word, one owner", lambda i: common[i % 5], {"owner": lambda i: corpus.owners[i % 20]}),
        ("common word, relevance", lambda i: common[i % 5], {"sort": "relevance"}),
        ("word -exclusion", lambda i: f"{middle[i % 50]} -{common[i % 5]}", {}),
        ("model: filter", lambda i: f"model:{corpus.models[i % 30][:6]}", {}),
        ("sampler: + seed: + size:", lambda i: f"sampler:euler seed:{i * 97} size:512x512", {}),
        ("lora: filter", lambda i: f"lora:{corpus.loras[i % 50]}", {}),
        ("kind: + after: + starred:", lambda i: f"kind:txt2img after:{day} starred:yes", {}),
        ("word + model: + before:, one owner", lambda i: f"{middle[i % 50]} model:{corpus.models[i % 30][:4]} "
                                                        f"before:{day}", {"owner": lambda i: corpus.owners[i % 20]}),
        ("everything, page 20", lambda i: "", {"page": 20}),
        ("empty box, one owner", lambda i: "", {"owner": lambda i: corpus.owners[i % 20]}),
    ]
    all_times: list[float] = []
    for name, make, kwargs in kinds:
        times = []
        totals = []
        for i in range(args.queries):
            owner = kwargs["owner"](i) if "owner" in kwargs else None
            options = {k: v for k, v in kwargs.items() if k != "owner"}
            query = make(i)
            started = time.perf_counter()
            page = index.search(query, owner=owner, **options)
            times.append(time.perf_counter() - started)
            totals.append(page.total)
        all_times.extend(times)
        p50, p95 = percentiles(times)
        results.append((f"search: {name}", f"p50 {p50:.1f} ms, p95 {p95:.1f} ms "
                                           f"(median {int(statistics.median(totals)):,} hits)"))
    p50, p95 = percentiles(all_times)
    results.append(("**search: all kinds together**", f"**p50 {p50:.1f} ms, p95 {p95:.1f} ms**"))

    # perceptual hashes
    query_picture = picture(1, 256)
    started = time.perf_counter()
    index.similar_by_hash(query_picture, limit=20)
    results.append(("hash top-20: first query (loads the hash matrix)",
                    f"{(time.perf_counter() - started) * 1000:.0f} ms"))
    p50, p95 = timed(lambda: index.similar_by_hash(query_picture, limit=20), 50)
    results.append((f"hash top-20 over {args.rows:,} (incl. hashing the query)", f"p50 {p50:.1f} ms, p95 {p95:.1f} ms"))
    p50, p95 = timed(lambda: index.similar_by_hash(query_picture, owner="user03", limit=20), 50)
    results.append(("hash top-20, one owner", f"p50 {p50:.1f} ms, p95 {p95:.1f} ms"))
    p50, p95 = timed(lambda: index.similar_by_prompt(ids[rng.randrange(len(ids))], limit=20), args.queries)
    results.append(("similar_by_prompt top-20", f"p50 {p50:.1f} ms, p95 {p95:.1f} ms"))

    # vectors
    if args.vectors:
        count = min(args.vectors, len(ids))
        vec_rng = np.random.default_rng(1)
        started = time.perf_counter()
        for at in range(0, count, 5000):
            block = vec_rng.standard_normal((min(5000, count - at), args.dim), dtype=np.float32)
            index.put_vectors("bench-clip", zip(ids[at:at + len(block)], block))
        elapsed = time.perf_counter() - started
        results.append((f"vectors stored ({count:,} × {args.dim} float32)", f"{count / elapsed:,.0f} /s"))
        results.append(("database size, with vectors", f"{mib(database):.1f} MiB"))
        query = vec_rng.standard_normal(args.dim, dtype=np.float32)
        fresh = GalleryIndex(database)  # a new process's view: the matrix is read from SQLite once
        started = time.perf_counter()
        fresh.nearest(query, "bench-clip", limit=20)
        results.append(("vector top-20: first query (loads the matrix)", f"{(time.perf_counter() - started):.2f} s"))
        p50, p95 = timed(lambda: fresh.nearest(vec_rng.standard_normal(args.dim, dtype=np.float32), "bench-clip"), 50)
        results.append((f"vector top-20, exact cosine over {count:,}", f"p50 {p50:.1f} ms, p95 {p95:.1f} ms"))
        p50, p95 = timed(lambda: fresh.nearest(query, "bench-clip", owner="user07"), 50)
        results.append(("vector top-20, one owner", f"p50 {p50:.1f} ms, p95 {p95:.1f} ms"))
        fresh.close()
    index.close()

    # scanning files
    if args.images:
        folder = work / "outputs"
        print(f"writing {args.images:,} pictures …", file=sys.stderr)
        for n in range(args.images):
            day_folder = folder / KINDS[n % len(KINDS)] / f"2024-{n % 12 + 1:02d}-01"
            day_folder.mkdir(parents=True, exist_ok=True)
            text = corpus.infotext(n)
            image = picture(n, args.image_size)
            if n % 5 == 4:
                exif = Image.Exif()
                exif[0x8769] = {0x9286: b"UNICODE\x00" + text.encode("utf-16-be")}
                image.save(day_folder / f"{n:05d}-{n}.jpg", quality=90, exif=exif)
            else:
                (day_folder / f"{n:05d}-{n}.png").write_bytes(png_bytes(image, text))
        scan_index = GalleryIndex(work / "scan.sqlite3")
        started = time.perf_counter()
        counts = scan_index.scan([folder], workers=2)
        elapsed = time.perf_counter() - started
        results.append((f"scan {args.images:,} new {args.image_size}² pictures (2 threads)",
                        f"{counts.added / elapsed:,.0f} images/s ({elapsed:.1f} s, {counts.skipped} skipped)"))
        started = time.perf_counter()
        again = scan_index.scan([folder])
        results.append(("rescan, nothing changed", f"{(time.perf_counter() - started) * 1000:.0f} ms "
                                                   f"({again.unchanged:,} files)"))
        scan_index.close()


if __name__ == "__main__":
    main()
