"""Checkpoint swap speed and memory growth over many swaps.

Swap: a full-size SD1.5-architecture checkpoint with random weights (written here, never committed)
is timed four ways in one run: a bare `safetensors.torch.load_file` of the file; Easel's cold load
from disk; a swap back from the RAM tier; a `get` of the model already on the device.
Goals: cold <= 1.2x the bare read; RAM-tier swap on CPU < 5 ms; device-tier swap < 10 ms.

Leak: two mid-size checkpoints are swapped 50 times with no RAM tier (every swap reads the file);
RSS after swap 50 must stay within 5 % of RSS after swap 2.

    python bench/swap_and_leak.py [--skip-full] [--swaps 50]
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import torch  # noqa: E402

import webui  # noqa: E402,F401
from accelerate import init_empty_weights  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from webui.models.catalog import Catalog, HashCache  # noqa: E402
from webui.models.ldm_export import save_ldm_checkpoint  # noqa: E402
from webui.models.manager import ModelManager, TierBudget  # noqa: E402

CONFIGS = ROOT / "webui" / "models" / "configs" / "sd15"
OUT = ROOT / "bench" / "out"


def random_sd_checkpoint(path: Path, seed: int, unet_overrides: dict | None = None, dtype=torch.float16) -> Path:
    """An SD1.x checkpoint of random weights in the original layout (fast: no real init)."""
    if path.exists():
        return path
    g = torch.Generator().manual_seed(seed)
    unet_cfg = {**UNet2DConditionModel.load_config(CONFIGS / "unet"), **(unet_overrides or {})}
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_cfg)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(CONFIGS / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(CONFIGS / "text_encoder"))
    for module in (unet, vae, text):
        state = {k: (torch.randn(v.shape, generator=g) * 0.02).to(dtype) for k, v in module.state_dict().items()}
        module.load_state_dict(state, assign=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_ldm_checkpoint(path, unet, vae, text)


def touch(tensors) -> float:
    """Read one value per 4 KiB page of every tensor: forces the bytes in from the file (safetensors
    maps files lazily, so a load that is never touched has read almost nothing)."""
    total = 0.0
    for t in tensors:
        flat = t.reshape(-1)
        total += float(flat[:: max(1, 4096 // t.element_size())].float().sum())
    return total


def model_tensors(model):
    return [t for m in model.modules() for t in m.state_dict().values()]


def drop_page_cache() -> bool:
    """Make the next read come from the disk (needs root on Linux); False where that is not allowed."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def manager(folder: Path, ram_models: int, reuse_modules: bool = True) -> ModelManager:
    catalog = Catalog([folder], HashCache(OUT / "hashes.json"))
    return ModelManager(catalog, torch.device("cpu"), torch.float16, TierBudget(models=1), TierBudget(models=ram_models),
                        reuse_modules=reuse_modules)


def bench_swap(repeats: int, from_disk: bool) -> None:
    folder = OUT / "full"
    a = random_sd_checkpoint(folder / "sd15-random-a.safetensors", 1)
    b = random_sd_checkpoint(folder / "sd15-random-b.safetensors", 2)
    size = a.stat().st_size / 1024**3
    m = manager(folder, ram_models=1)
    for info in m.list():
        m.catalog.ensure_hash(info)  # hashing is a one-time cost, cached on disk; not part of a swap
    bare, cold, ram, device, reuse = [], [], [], [], []
    lean = manager(folder, ram_models=0)  # nothing kept in RAM: every switch drops the old model
    from_disk = from_disk and drop_page_cache()
    load_file(str(a))  # warm the page cache so both reads are alike (unless each read drops it)
    for _ in range(repeats):
        from_disk and drop_page_cache()
        t = time.perf_counter()
        sd = load_file(str(a))
        touch(sd.values())
        bare.append(time.perf_counter() - t)
        del sd
        m.unload_all()
        from_disk and drop_page_cache()
        t = time.perf_counter()
        touch(model_tensors(m.get(a.name)))
        cold.append(time.perf_counter() - t)
        m.get(b.name)
        t = time.perf_counter()
        m.get(a.name)
        assert m.last_source == "ram"
        ram.append(time.perf_counter() - t)
        t = time.perf_counter()
        m.get(a.name)
        device.append(time.perf_counter() - t)
        m.unload_all()
        lean.get(b.name)
        from_disk and drop_page_cache()
        t = time.perf_counter()
        touch(model_tensors(lean.get(a.name)))  # same architecture: the weights move into b's modules
        reuse.append(time.perf_counter() - t)
        assert lean.last_source == "disk (weights-only swap)"
        lean.unload_all()
    m.unload_all()
    med = statistics.median
    where = "page cache dropped before every read" if from_disk else "file in the page cache"
    print(f"full-size SD1.5 architecture, random fp16 weights, {size:.2f} GiB file, {where}, median of {repeats}")
    print(f"  bare safetensors load_file : {med(bare) * 1000:9.1f} ms   (both read every page of the file)")
    print(f"  Easel cold load from disk  : {med(cold) * 1000:9.1f} ms   ratio {med(cold) / med(bare):.2f}x (goal <= 1.2x)")
    print(f"  weights-only swap from disk: {med(reuse) * 1000:9.1f} ms   ratio {med(reuse) / med(bare):.2f}x "
          "(same architecture: no module is built)")
    print(f"  swap from the RAM tier     : {med(ram) * 1000:9.3f} ms   (goal < 5 ms on CPU)")
    print(f"  swap from the device tier  : {med(device) * 1000:9.3f} ms   (goal < 10 ms)")


def bench_leak(swaps: int) -> None:
    folder = OUT / "mid"
    mid = {"block_out_channels": [128, 256, 512, 512], "cross_attention_dim": 768}
    a = random_sd_checkpoint(folder / "mid-a.safetensors", 3, mid)
    b = random_sd_checkpoint(folder / "mid-b.safetensors", 4, mid)
    print(f"leak: two {a.stat().st_size / 1024**2:.0f} MiB checkpoints, {swaps} swaps, each from disk")
    for reuse, how in ((True, "weights-only swaps"), (False, "new modules every time")):
        m = manager(folder, ram_models=0, reuse_modules=reuse)
        after: dict[int, int] = {}
        for i in range(1, swaps + 1):
            m.get((a if i % 2 else b).name)
            assert m.last_source == ("disk (weights-only swap)" if reuse and i > 1 else "disk")
            after[i] = rss()
        m.unload_all()
        growth = (after[swaps] - after[2]) / after[2]
        print(f"  {how:24}: RSS after swap 2: {after[2] / 1024**2:8.1f} MiB   after swap {swaps}: "
              f"{after[swaps] / 1024**2:8.1f} MiB   growth {growth * 100:+.2f} % (goal within 5 %)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-full", action="store_true", help="skip the 2 GiB swap benchmark")
    ap.add_argument("--skip-leak", action="store_true", help="skip the 50-swap memory benchmark")
    ap.add_argument("--from-disk", action="store_true",
                    help="drop the OS page cache before each cold read (root on Linux), so reads hit the disk")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--swaps", type=int, default=50)
    args = ap.parse_args()
    if not args.skip_full:
        bench_swap(args.repeats, args.from_disk)
    if not args.skip_leak:
        bench_leak(args.swaps)


if __name__ == "__main__":
    main()
