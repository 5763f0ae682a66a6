"""Textual inversion with the demo model: a made-up word learns a concept it did not evoke, the file is A1111's,
training resumes and stops cleanly, the shared model is untouched, others' jobs run meanwhile, bad datasets
are refused, and the A1111 routes."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
import torch

from apiclient import api_client
from webui.admission import Admission, Caller
from webui.demo.scenes import POSITIONS, SIZES, ShapeFact, _bbox, draw_scene
from webui.demo.shape_checker import read_image
from webui.errors import FieldError
from webui.generation.requests import Txt2ImgRequest
from webui.models.embeddings import load_embedding
from webui.models.manager import DEMO_CHECKPOINT
from webui.services import Easel
from webui.settings import settings_from_args
from webui.training.textual_inversion import CreateEmbeddingRequest, TrainEmbeddingRequest, learning_rates

DEMO = Path(__file__).resolve().parents[1] / "models" / "Stable-diffusion" / DEMO_CHECKPOINT
WORD = "zorblat"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    data = tmp_path_factory.mktemp("ti")
    easel = Easel.create(settings_from_args(["--data-dir", str(data), "--ckpt-dir", str(DEMO.parent),
                                             "--device", "cpu"]))
    folder = data / "orange-stars"
    folder.mkdir()
    backgrounds = ["white", "blue", "black", "green", "purple"]
    for i in range(10):  # the concept: an orange star, anywhere, on any background
        position, size = list(POSITIONS)[i % 5], ["medium", "large"][i % 2]
        cx, cy = POSITIONS[position][0] * 64, POSITIONS[position][1] * 64
        shape = ShapeFact("star", "orange", position, size, (cx, cy), _bbox("star", cx, cy, SIZES[size] * 64, 64))
        draw_scene([shape], backgrounds[i % 5], 64).save(folder / f"{i:02d}-star.png")
        (folder / f"{i:02d}-star.txt").write_text(f"{backgrounds[i % 5]} background")
    yield easel
    easel.close()


def run(easel, kind: str, request, owner: str = "trainer"):
    job = Admission(easel).submit(kind, request, Caller(owner=owner)).job
    assert job.wait(600), "the job did not finish"
    assert job.error is None, job.error
    return job.result


def stars(easel, prompt: str, n: int = 8) -> int:
    model = easel.load_model(None)
    hits = 0
    for seed in range(n):
        image = easel.engine.txt2img(model, Txt2ImgRequest(prompt=prompt, seed=seed, steps=12, sampler_name="Euler",
                                                           cfg_scale=5)).images[0]
        reading = read_image(image)
        hits += reading.colour == "orange" and reading.kind == "star"
    return hits


def train(name: str, steps: int, **changes) -> TrainEmbeddingRequest:
    return TrainEmbeddingRequest(**{"embedding_name": name, "learn_rate": "0.005", "batch_size": 4,
                                    "data_root": "orange-stars", "template_filename": "subject.txt",
                                    "training_width": 64, "training_height": 64, "steps": steps,
                                    "save_embedding_every": 0, **changes})


def model_digest(easel) -> str:
    model = easel.load_model(None)
    h = hashlib.sha256()
    for module in (model.unet, model.text_encoder, model.vae):
        for name, tensor in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_a_new_word_learns_the_concept(demo):
    before_weights = model_digest(demo)
    before = stars(demo, f"a {WORD}")
    path = run(demo, "create_embedding", CreateEmbeddingRequest(name=WORD, num_vectors_per_token=2))
    raw = torch.load(path, weights_only=True)
    assert set(raw) >= {"string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
    assert raw["string_to_param"]["*"].shape == (2, 64) and raw["step"] == 0 and raw["name"] == WORD
    result = run(demo, "train", train(WORD, 300))
    assert result.steps_done == 300 and not result.interrupted
    losses = [float(line.split(",")[1]) for line in result.log.read_text().splitlines()[1:]]
    assert len(losses) == 300 and sum(losses[-50:]) < sum(losses[:50])  # the loss falls
    embedding = load_embedding(path)  # Easel's own loader reads it; A1111's keys and shapes
    assert embedding.vectors["clip_l"].shape == (2, 64) and torch.load(path, weights_only=True)["step"] == 300
    after = stars(demo, f"a {WORD}")  # usable in prompts at once
    assert after >= 6 and after >= before + 4, (before, after)
    assert model_digest(demo) == before_weights  # only the vectors learned


def test_resume_interrupt_and_a_second_users_job(demo):
    run(demo, "create_embedding", CreateEmbeddingRequest(name="resumed", init_text="star"))
    first = run(demo, "train", train("resumed", 10))
    assert first.steps_done == 10
    again = run(demo, "train", train("resumed", 5))
    assert again.steps_done == 15  # from the saved step, with the optimizer state kept beside it
    assert (first.embedding.with_name("resumed.optim.pt")).is_file()
    assert len(again.log.read_text().splitlines()) == 1 + 15

    job = Admission(demo).submit("train", train("resumed", 5000), Caller(owner="trainer")).job
    deadline = time.time() + 60
    while job.progress == 0 and time.time() < deadline:
        time.sleep(0.05)
    other = Admission(demo).submit("txt2img", Txt2ImgRequest(prompt="a red circle", steps=8), Caller(owner="other")).job
    assert other.wait(120) and other.error is None
    assert not job.done  # the other user's picture came while the training ran
    job.interrupt()
    assert job.wait(60) and job.error is None
    stopped = job.result
    assert stopped.interrupted and 15 < stopped.steps_done < 5015
    assert load_embedding(stopped.embedding).vectors["clip_l"].shape == (1, 64)  # a usable embedding


def test_bad_datasets_and_fields_are_refused(demo, tmp_path):
    run(demo, "create_embedding", CreateEmbeddingRequest(name="checked"))
    data = demo.settings.data_dir
    (data / "empty").mkdir()
    (data / "junk").mkdir()
    (data / "junk" / "a.png").write_bytes(b"not a picture")
    (data / "junk" / "b.png").write_bytes(b"nor this")
    (data / "one").mkdir()
    (Path(demo.settings.data_dir) / "orange-stars" / "00-star.png").replace(data / "one" / "00-star.png")
    cases = [("empty", "data_root", "no pictures"), ("junk", "data_root", "not pictures"),
             ("one", "data_root", "at least 2"), (str(tmp_path), "data_root", "outside")]
    for root, field, words in cases:
        with pytest.raises(FieldError) as e:
            Admission(demo).submit("train", train("checked", 5, data_root=root), Caller(owner="trainer"))
        assert e.value.field == field and words in e.value.message, (root, e.value)
    (data / "one" / "00-star.png").replace(Path(demo.settings.data_dir) / "orange-stars" / "00-star.png")
    for changes, field in (({"embedding_name": "nope"}, "embedding_name"), ({"learn_rate": "fast"}, "learn_rate"),
                           ({"template_filename": "../../etc/passwd"}, "template_filename")):
        with pytest.raises(FieldError) as e:
            Admission(demo).submit("train", train("checked", 5, **changes), Caller(owner="trainer"))
        assert e.value.field == field
    with pytest.raises(FieldError, match="exists"):  # refused at admission, the file kept
        Admission(demo).submit("create_embedding", CreateEmbeddingRequest(name="checked"), Caller(owner="trainer"))


def test_learning_rate_schedules():
    at = learning_rates("0.005:100, 1e-3:1000, 1e-5", 5000)
    assert (at(0), at(99), at(100), at(999), at(1000), at(4000)) == (0.005, 0.005, 1e-3, 1e-3, 1e-5, 1e-5)
    assert learning_rates("0.01", 10)(9) == 0.01


def test_the_a1111_routes(demo):
    with api_client(demo) as client:
        demo.manager.preferred = None  # the demo checkpoint, the default
        r = client.post("/sdapi/v1/create/embedding", json={"name": "viaapi", "num_vectors_per_token": 1,
                                                            "overwrite_old": False, "init_text": "*"})
        assert r.status_code == 200 and "viaapi" in r.json()["info"], r.text
        body = {"id_task": "x", "embedding_name": "viaapi", "learn_rate": "0.005", "batch_size": 2, "gradient_step": 2,
                "data_root": "orange-stars", "log_directory": "textual_inversion", "training_width": 64,
                "training_height": 64, "varsize": False, "steps": 4, "clip_grad_mode": "norm",
                "clip_grad_value": "1.0", "shuffle_tags": True, "tag_drop_out": 0.1, "latent_sampling_method": "random",
                "use_weight": False, "create_image_every": 4, "save_embedding_every": 2,
                "template_filename": "subject_filewords.txt", "save_image_with_stored_embedding": False,
                "preview_from_txt2img": False}
        r = client.post("/sdapi/v1/train/embedding", json=body)
        assert r.status_code == 200 and r.json()["step"] == 4, r.text
        assert (demo.settings.models_dir / "embeddings" / "viaapi-2.pt").is_file()  # a copy every 2 steps
        assert (demo.settings.data_dir / "train" / "viaapi" / "images" / "viaapi-4.png").is_file()  # a preview
        assert "viaapi" in client.get("/sdapi/v1/embeddings").json()["loaded"]
        bad = client.post("/sdapi/v1/train/embedding", json={**body, "data_root": "/etc"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "data_root"
