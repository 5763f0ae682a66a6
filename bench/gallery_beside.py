"""Does the gallery's background embedding slow a generation running beside it?

The demo checkpoint makes txt2img pictures through the queue, as a user's jobs run, while the gallery's
background thread (webui/gallery/service.py) embeds a backlog of pictures with the demo embedding model.
Three conditions, interleaved and repeated in one process: no background work; the background thread as
Easel runs it (lowest CPU priority, pausing while the queue runs a job); and the same thread with the pause
switched off (what the pause avoids). Each condition embeds under its own model name, so each starts with
the whole backlog to do.

    python bench/gallery_beside.py [--jobs 6] [--repeats 3] [--backlog 3000]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import webui  # noqa: E402,F401
from webui.admission import Admission, Caller  # noqa: E402
from webui.demo.scenes import SceneGenerator  # noqa: E402
from webui.gallery.embedder import find_embedder  # noqa: E402
from webui.gallery.index import GalleryIndex  # noqa: E402
from webui.gallery.service import Gallery  # noqa: E402
from webui.generation.requests import Txt2ImgRequest  # noqa: E402
from webui.services import Easel  # noqa: E402
from webui.settings import settings_from_args  # noqa: E402


class Renamed:
    """The demo embedder under another name: each condition gets the whole backlog to embed."""

    def __init__(self, embedder, name: str):
        self.inner, self.name = embedder, name

    def embed_images(self, images):
        return self.inner.embed_images(images)

    def embed_text(self, texts):
        return self.inner.embed_text(texts)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=6, help="txt2img jobs timed per condition")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backlog", type=int, default=3000, help="pictures waiting to be embedded")
    args = ap.parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="easel-gallery-beside-"))
    easel = Easel.create(settings_from_args(["--data-dir", str(data), "--ckpt-dir",
                                             str(ROOT / "models" / "Stable-diffusion"), "--device", "cpu"]))
    folder = easel.settings.outputs_dir / "backlog"
    folder.mkdir(parents=True)
    scenes = SceneGenerator(7)
    for i in range(args.backlog):
        scenes.scene(i).image.save(folder / f"{i:05d}.png")
    easel.gallery.rescan()
    embedder = find_embedder(easel.settings.models_dir)
    admission, caller = Admission(easel), Caller(owner="bench")

    def generate() -> float:
        t = time.perf_counter()
        for seed in range(args.jobs):
            job = admission.submit("txt2img", Txt2ImgRequest(prompt="a red circle on the left, blue background",
                                                             seed=seed, steps=args.steps), caller).job
            job.wait(600)
        return time.perf_counter() - t

    def beside(name: str, pause: bool) -> tuple[float, int]:
        index = GalleryIndex(easel.settings.cache_dir / "gallery.sqlite")  # its own connection, as a thread would
        busy = (lambda: easel.queue.current is not None) if pause else (lambda: False)
        gallery = Gallery(index, easel.settings.outputs_dir, easel.settings.cache_dir / "thumbnails",
                          embedder=lambda: Renamed(embedder, name), busy=busy)
        gallery.start()
        time.sleep(1.0)  # its scan (nothing new) and the model are ready; embedding is under way
        seconds = generate()
        done = args.backlog - len(index.missing_vectors(name, args.backlog))
        gallery.close()
        return seconds, done

    generate()  # warm-up: the checkpoint on the device, first-call allocations
    times: dict[str, list[float]] = {"alone": [], "beside, pausing (Easel)": [], "beside, not pausing": []}
    embedded: dict[str, list[int]] = {k: [] for k in times}
    for r in range(args.repeats):
        times["alone"].append(generate())
        for key, pause in (("beside, pausing (Easel)", True), ("beside, not pausing", False)):
            seconds, done = beside(f"bench-{r}-{pause}", pause)
            times[key].append(seconds)
            embedded[key].append(done)
    base = statistics.median(times["alone"])
    print(f"demo checkpoint, {args.jobs} txt2img jobs of {args.steps} steps per run, backlog {args.backlog} "
          f"pictures, median of {args.repeats}")
    print("| condition | seconds for the jobs | × alone | pictures embedded meanwhile |\n|---|---|---|---|")
    for key, values in times.items():
        m = statistics.median(values)
        done = f"{statistics.median(embedded[key]):.0f}" if embedded[key] else "—"
        print(f"| {key} | {m:.2f} | {m / base:.2f} | {done} |")
    easel.close()
    return {k: statistics.median(v) for k, v in times.items()}


if __name__ == "__main__":
    main()
