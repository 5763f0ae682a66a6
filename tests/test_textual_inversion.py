"""Textual inversion with the demo model: a made-up word learns a concept it did not evoke, the file is A1111's
(or a .safetensors one, trained in its own format), training resumes and stops cleanly, the shared model is
untouched, others' jobs run meanwhile, bad datasets are refused, pictures sent with the request (or uploaded in
the page) train too, and the A1111 routes; SDXL embeddings (clip_l + clip_g) with the tiny SDXL model."""
from __future__ import annotations

import base64
import hashlib
import math
import os
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open

from apiclient import api_client
from tiny_models import build_tiny_sdxl, write_safetensors
from webui.admission import Admission, Caller
from webui.demo.scenes import POSITIONS, SIZES, ShapeFact, _bbox, draw_scene
from webui.demo.shape_checker import read_image
from webui.errors import FieldError
from webui.generation.requests import Txt2ImgRequest
from webui.images.infotext import parse_infotext
from webui.models.embeddings import load_embedding
from webui.models.manager import DEMO_CHECKPOINT
from webui.services import Easel
from webui.settings import settings_from_args
from webui.training.textual_inversion import CreateEmbeddingRequest, TrainEmbeddingRequest, learning_rates
from webui.ui.train import TrainingWatch, loss_frame, sent_pictures

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


def failure(easel, kind: str, request) -> str:
    """The error of a job that was admitted but failed when it ran."""
    job = Admission(easel).submit(kind, request, Caller(owner="trainer")).job
    assert job.wait(600) and job.error is not None
    return job.error


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
    for module in (model.unet, model.text_encoder, model.text_encoder_2, model.vae):
        if module is None:
            continue
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
    assert (first.log.parent / "resumed.optim.pt").is_file()
    assert not first.embedding.with_name("resumed.optim.pt").exists()  # models/embeddings holds embeddings only
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
        assert (demo.settings.data_dir / "train" / "viaapi" / "embeddings" / "viaapi-2.pt").is_file()  # a copy
        assert "viaapi-2" not in client.get("/sdapi/v1/embeddings").json()["loaded"]  # every 2 steps, in the log
        assert (demo.settings.data_dir / "train" / "viaapi" / "images" / "viaapi-4.png").is_file()  # a preview
        assert "viaapi" in client.get("/sdapi/v1/embeddings").json()["loaded"]
        bad = client.post("/sdapi/v1/train/embedding", json={**body, "data_root": "/etc"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "data_root"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_safetensors_embeddings_are_created_and_trained_in_their_format(demo):
    path = run(demo, "create_embedding", CreateEmbeddingRequest(name="safe", num_vectors_per_token=2,
                                                                 file_format="safetensors"))
    assert path.name == "safe.safetensors"
    with safe_open(str(path), "pt") as f:  # the community layout: the vectors under emb_params, facts as metadata
        assert set(f.keys()) == {"emb_params"} and f.metadata()["name"] == "safe" and f.metadata()["step"] == "0"
    start = load_embedding(path).vectors["clip_l"]
    assert start.shape == (2, 64)
    before = path.read_bytes()
    result = run(demo, "train", train("safe", 4, save_embedding_every=2))
    assert result.embedding == path and result.steps_done == 4 and path.read_bytes() != before
    trained = load_embedding(path).vectors["clip_l"]  # still loads through Easel's own loader
    assert trained.shape == (2, 64) and not torch.equal(trained, start)
    copy = result.log.parent / "embeddings" / "safe-2.safetensors"  # copies in the embedding's own format, in
    assert result.copies == [copy]  # the log folder (A1111's); none at the last step: that is the file itself
    assert load_embedding(copy).vectors["clip_l"].shape == (2, 64) and not copy.with_name("safe-2.pt").exists()
    assert not path.with_name("safe-2.safetensors").exists()
    assert (result.log.parent / "safe.optim.pt").is_file() and not path.with_name("safe.pt").exists()
    again = run(demo, "train", train("safe", 2))
    assert again.steps_done == 6  # the step is kept in the metadata
    demo.engine.embeddings.refresh()
    assert "safe" in demo.engine.embeddings.loaded
    with pytest.raises(FieldError, match="exists"):  # one name, whatever the format
        Admission(demo).submit("create_embedding", CreateEmbeddingRequest(name="safe"), Caller(owner="trainer"))
    replaced = run(demo, "create_embedding", CreateEmbeddingRequest(name="safe", overwrite_old=True))
    assert replaced.name == "safe.pt" and not path.exists()  # the prompt word names one file


def test_pictures_sent_with_the_request(demo):
    pictures = sorted((demo.settings.data_dir / "orange-stars").glob("*.png"))[:4]
    sent = [b64(p.read_bytes()) for p in pictures]
    run(demo, "create_embedding", CreateEmbeddingRequest(name="sent"))
    request = train("sent", 3, data_root="", images=sent, captions=["white background", "blue background"])
    admitted = Admission(demo).prepare("train", request, Caller(owner="trainer"))
    kept, dataset = admitted.request
    assert kept.images == [] and len(dataset.pictures) == 4  # the job holds the decoded pictures, not the base64
    assert dataset.captions == ["white background", "blue background", "", ""]
    assert dataset.pictures[0].size == (64, 64)
    result = run(demo, "train", request)
    assert result.steps_done == 3 and math.isfinite(result.last_loss)
    cases = [({"images": sent[:1]}, "images", "at least 2"),
             ({"images": [sent[0], b64(b"not a picture at all")]}, "images.1", "not an image"),
             ({"images": [sent[0], "@@@"]}, "images.1", "base64"),
             ({"images": sent, "data_root": "orange-stars"}, "images", "not both"),
             ({"images": [], "data_root": ""}, "data_root", "name a folder")]
    for changes, field, words in cases:
        with pytest.raises(FieldError) as e:
            Admission(demo).submit("train", train("sent", 2, **{"data_root": "", **changes}), Caller(owner="trainer"))
        assert e.value.field == field and words in e.value.message, (changes, e.value)
    with pytest.raises(ValueError, match="captions"):
        train("sent", 2, data_root="", images=sent[:2], captions=["a", "b", "c"])
    with api_client(demo) as client:
        body = {"embedding_name": "sent", "learn_rate": "0.005", "batch_size": 2, "training_width": 64,
                "training_height": 64, "steps": 2, "template_filename": "subject.txt", "images": sent[:2]}
        r = client.post("/sdapi/v1/train/embedding", json=body)
        assert r.status_code == 200 and r.json()["step"] == 5, r.text
        bad = client.post("/sdapi/v1/train/embedding", json={**body, "images": [sent[0], b64(b"<html>")]})
        assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "images.1", bad.text
        one = client.post("/sdapi/v1/train/embedding", json={**body, "images": sent[:1]})
        assert one.status_code == 422 and one.json()["detail"][0]["field"] == "images", one.text


def test_pictures_uploaded_in_the_page(demo, tmp_path):
    """The Train tab's uploads: Gradio's temporary files, captions from a .txt of the same name (else the file
    name), into the same request fields the API takes."""
    folder = demo.settings.data_dir / "orange-stars"
    uploads = [tmp_path / "01-orange_star.png", tmp_path / "02-star.png", tmp_path / "02-star.txt",
               tmp_path / "03-star.png"]
    for i, path in enumerate(uploads):
        if path.suffix == ".png":
            path.write_bytes((folder / f"0{i}-star.png").read_bytes())
    uploads[2].write_text("green background, star")
    images, captions = sent_pictures([str(p) for p in uploads])
    assert len(images) == 3 and captions == ["orange star", "green background, star", "star"]
    run(demo, "create_embedding", CreateEmbeddingRequest(name="uploaded"))
    result = run(demo, "train", train("uploaded", 2, data_root="", images=images, captions=captions))
    assert result.steps_done == 2
    (tmp_path / "notes.pdf").write_bytes(b"%PDF-1.4")
    with pytest.raises(FieldError) as e:
        sent_pictures([str(uploads[0]), str(tmp_path / "notes.pdf")])
    assert e.value.field == "images" and "notes.pdf" in e.value.message
    (tmp_path / "fake.png").write_bytes(b"not a png")  # a picture's name, not a picture: admission says which
    images, captions = sent_pictures([str(uploads[0]), str(tmp_path / "fake.png")])
    with pytest.raises(FieldError) as e:
        Admission(demo).submit("train", train("uploaded", 2, data_root="", images=images, captions=captions),
                               Caller(owner="trainer"))
    assert e.value.field == "images.1" and "not an image" in e.value.message


def test_the_train_tab_follows_a_growing_log(tmp_path):
    """While a job runs the tab plots the log as it grows (a half-written line left out) and shows the previews
    this job wrote, by step; nothing is sent again while nothing changed."""
    folder = tmp_path / "train" / "word"
    (folder / "images").mkdir(parents=True)
    old = folder / "images" / "word-10.png"
    Image.new("RGB", (8, 8)).save(old)
    (folder / "loss.csv").write_text("step,loss,learn_rate,seconds\n1,0.5,0.005,0.1\n2,0.4,0.005,0.2\n3,0.")
    assert loss_frame(folder / "loss.csv").values.tolist() == [[1, 0.5], [2, 0.4]]
    job = SimpleNamespace(started=time.time())
    os.utime(old, (job.started - 100, job.started - 100))  # an earlier run's preview
    for step in (20, 15):
        Image.new("RGB", (8, 8)).save(folder / "images" / f"word-{step}.png")
    watch = TrainingWatch(folder, "word")
    _, plot, gallery = watch(job)
    assert len(plot) == 2 and [caption for _, caption in gallery] == ["step 15", "step 20"]
    watch.last_read = 0
    _, plot, gallery = watch(job)
    assert plot == gr.skip() and gallery == gr.skip()  # nothing changed: nothing sent
    rows = "".join(f"{n},0.1,0.005,0.1\n" for n in range(1, 4501))
    (folder / "loss.csv").write_text("step,loss,learn_rate,seconds\n" + rows)
    thinned = loss_frame(folder / "loss.csv")
    assert len(thinned) <= 2001 and thinned["step"].iloc[-1] == 4500


# -- SDXL -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def xl(tmp_path_factory):
    data = tmp_path_factory.mktemp("ti-xl")
    ckpts = data / "models" / "Stable-diffusion"
    write_safetensors(build_tiny_sdxl(seed=2), ckpts / "tiny-xl.safetensors",
                      metadata={"modelspec.resolution": "64x64"})
    easel = Easel.create(settings_from_args(["--data-dir", str(data), "--ckpt-dir", str(ckpts), "--device", "cpu"]))
    balls = data / "balls"
    balls.mkdir()
    for i, colour in enumerate(("red", "orange", "yellow", "purple")):
        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).ellipse((8 + i * 4, 10, 50, 52), fill=colour)
        image.save(balls / f"{i}-{colour}_ball.png")
    yield easel
    easel.close()


def test_sdxl_embeddings_train_both_halves(xl):
    weights = model_digest(xl)
    path = run(xl, "create_embedding", CreateEmbeddingRequest(name="xlword", init_text="red ball",
                                                              num_vectors_per_token=2))
    assert path.name == "xlword.safetensors"  # SDXL's format: a half per text encoder
    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) == {"clip_l", "clip_g"} and f.metadata()["step"] == "0"
    start = load_embedding(path).vectors
    assert start["clip_l"].shape == (2, 32) and start["clip_g"].shape == (2, 64)
    result = run(xl, "train", TrainEmbeddingRequest(
        embedding_name="xlword", data_root="balls", template_filename="subject_filewords.txt", learn_rate="0.05",
        batch_size=2, training_width=64, training_height=64, steps=3, save_embedding_every=0, create_image_every=3))
    assert result.steps_done == 3 and math.isfinite(result.last_loss)
    losses = [float(line.split(",")[1]) for line in result.log.read_text().splitlines()[1:]]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    trained = load_embedding(path).vectors
    for half in ("clip_l", "clip_g"):  # both halves learned, jointly
        assert trained[half].shape == start[half].shape and not torch.equal(trained[half], start[half]), half
    assert result.previews and result.previews[0].is_file()  # a preview made with the SDXL embedding
    assert model_digest(xl) == weights  # only the vectors learned
    made = xl.engine.txt2img(xl.load_model(None), Txt2ImgRequest(prompt="a xlword", steps=2, width=64, height=64,
                                                                 seed=3, sampler_name="Euler"))
    hashes = parse_infotext(made.infotexts[0]).get("TI hashes", "")
    assert hashes.startswith("xlword: "), made.infotexts[0]  # usable in a prompt at once


def test_sdxl_refusals(xl):
    error = failure(xl, "create_embedding", CreateEmbeddingRequest(name="xlpt", file_format="pt"))
    assert error.startswith("file_format:") and "safetensors" in error
    folder = xl.settings.models_dir / "embeddings"
    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}, "name": "sdone", "step": 0}, folder / "sdone.pt")
    error = failure(xl, "train", TrainEmbeddingRequest(embedding_name="sdone", data_root="balls", steps=1,
                                                       training_width=64, training_height=64))
    assert error.startswith("embedding_name:") and "clip_g" in error, error  # one half is not an SDXL embedding
