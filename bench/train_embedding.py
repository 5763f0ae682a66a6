"""Textual-inversion training: time per step with batch 1 and 4 (the demo checkpoint on CPU by default, or a
checkpoint you name; on a GPU machine pass --device cuda).

    python bench/train_embedding.py [--ckpt PATH] [--steps 60] [--size 64]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import webui  # noqa: E402,F401
from webui.admission import Admission, Caller  # noqa: E402
from webui.demo.scenes import SceneGenerator  # noqa: E402
from webui.generation.requests import Txt2ImgRequest  # noqa: E402
from webui.services import Easel  # noqa: E402
from webui.settings import settings_from_args  # noqa: E402
from webui.training.textual_inversion import (CreateEmbeddingRequest, Dataset, TrainEmbeddingRequest,  # noqa: E402
                                              create_embedding, train_embedding)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", type=Path, default=ROOT / "models" / "Stable-diffusion")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="easel-train-bench-"))
    easel = Easel.create(settings_from_args(["--data-dir", str(data), "--ckpt-dir", str(args.ckpt), "--device",
                                             args.device]))
    model = easel.load_model(None)
    folder = data / "pictures"
    folder.mkdir()
    for i, scene in enumerate(SceneGenerator(3).batch(0, 10)):
        scene.image.resize((args.size, args.size)).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(scene.caption)
    figures = {}
    for batch in (1, 4):
        name = f"bench{batch}"
        path = create_embedding(easel.settings.models_dir / "embeddings", model, CreateEmbeddingRequest(name=name))
        request = TrainEmbeddingRequest(embedding_name=name, data_root=str(folder), batch_size=batch,
                                        steps=args.steps, training_width=args.size, training_height=args.size,
                                        template_filename="subject_filewords.txt", save_embedding_every=0)
        dataset = Dataset.from_folder(folder, args.size, args.size)
        train_embedding(request.model_copy(update={"steps": 5}), path, dataset, data / "log", lambda: model, None)
        started = time.perf_counter()
        train_embedding(request, path, dataset, data / "log", lambda: model, None)
        figures[batch] = (time.perf_counter() - started) / args.steps
    print(f"{model.info.name}, {args.size}x{args.size}, {args.device}, {args.steps} steps each (after 5 warm-up)")
    print("| batch | seconds per step | pictures per second |\n|---|---|---|")
    for batch, seconds in figures.items():
        print(f"| {batch} | {seconds:.3f} | {batch / seconds:.1f} |")

    # another owner's txt2img while a long training runs, against the same picture on an idle queue
    admission = Admission(easel)

    def picture() -> float:
        started = time.perf_counter()
        job = admission.submit("txt2img", Txt2ImgRequest(prompt="a red circle", steps=20), Caller(owner="other")).job
        job.wait(600)
        return time.perf_counter() - started
    picture()
    idle = sorted(picture() for _ in range(5))[2]
    long = TrainEmbeddingRequest(embedding_name="bench4", data_root=str(folder), batch_size=4, steps=100_000,
                                 training_width=args.size, training_height=args.size, save_embedding_every=0)
    training = admission.submit("train", long, Caller(owner="trainer")).job
    while training.progress == 0:
        time.sleep(0.05)
    beside = sorted(picture() for _ in range(5))[2]
    training.interrupt()
    training.wait(60)
    print(f"\nanother owner's 20-step picture: idle queue {idle:.2f} s, while a training runs {beside:.2f} s "
          f"({beside / idle:.2f}×); the training had reached step {training.result.steps_done}")
    easel.close()
    return figures


if __name__ == "__main__":
    main()
