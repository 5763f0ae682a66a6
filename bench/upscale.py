"""Tiled upscaling against one plain spandrel call, and how memory grows with the picture.

A 4× Real-ESRGAN architecture at full size (RRDBNet, 64 features, 23 blocks; random weights) upscales a
picture two ways, each in a fresh process so peak memory is its own:

    plain   spandrel's descriptor on the whole picture at once
    tiled   Easel's UpscalerModel.run (tiles of --tile px, 16 px overlap, feathered blend)

It prints time and peak memory (RSS on the CPU, torch's peak allocation on CUDA) for each, their
ratio, and the tiled run's peak memory for growing pictures (it should stay nearly flat: the
activations are a tile's; only the input and output pictures grow).

    python bench/upscale.py [--device cpu|cuda] [--size 256] [--sizes 128 256 512] [--tile 128]

On this project's 2-core CPU box a full-size 4× model at 1024² takes many minutes, so the defaults are
smaller; on a GPU use --size 1024 --sizes 512 1024 2048 --tile 512.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def one(mode: str, size: int, tile: int, device: str) -> dict:
    """Run in a child process: one upscale, its time and peak memory."""
    import numpy as np
    import torch
    from PIL import Image

    from spandrel_here import import_spandrel
    if not import_spandrel():
        raise SystemExit("spandrel cannot be imported")
    from spandrel import ModelLoader
    from spandrel.architectures.ESRGAN import ESRGAN

    from webui.models.upscalers import UpscalerModel

    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    net = ESRGAN(num_filters=64, num_blocks=23, scale=4)
    descriptor = ModelLoader(torch.device("cpu")).load_from_state_dict(net.state_dict()).eval().to(device)
    if device == "cuda":
        descriptor.half()
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    picture = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with torch.no_grad():
        if mode == "plain":
            x = torch.from_numpy(np.asarray(picture)).permute(2, 0, 1)[None].to(device, descriptor.dtype) / 255
            out = descriptor(x)
            shape = tuple(out.shape[-2:])
        else:
            out = UpscalerModel(descriptor, "bench").run(picture, tile, overlap=16)
            shape = (out.height, out.width)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"mode": mode, "size": size, "seconds": seconds, "peak_mib": peak / 2**20, "out": shape}


def child(mode: str, size: int, tile: int, device: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", mode, str(size), str(tile), device],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="*", default=[128, 256, 512])
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, size, tile, device = args.child
        print(json.dumps(one(mode, int(size), int(tile), device)))
        return
    plain = child("plain", args.size, args.tile, args.device)
    tiled = child("tiled", args.size, args.tile, args.device)
    memory = "torch peak MiB" if args.device == "cuda" else "peak RSS MiB"
    print(f"4x RRDBNet (64 features, 23 blocks), {args.size}² → {args.size * 4}², {args.device}, tile {args.tile}")
    print(f"| run | seconds | {memory} |\n|---|---|---|")
    for r in (plain, tiled):
        print(f"| {r['mode']} | {r['seconds']:.2f} | {r['peak_mib']:.0f} |")
    print(f"| tiled / plain | {tiled['seconds'] / plain['seconds']:.2f}× | {tiled['peak_mib'] / plain['peak_mib']:.2f}× |")
    print(f"\n| picture | tiled seconds | tiled {memory} |\n|---|---|---|")
    for size in args.sizes:
        r = tiled if size == args.size else child("tiled", size, args.tile, args.device)
        print(f"| {size}² | {r['seconds']:.2f} | {r['peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
