"""The gallery through the API: every saved image is searchable at once, pictures from other tools after a
rescan, files and thumbnails by id, reverse search, star and delete, and who sees what with logins on."""
from __future__ import annotations

import base64
import io
import time
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from app import build_app
from apiclient import api_client
from webui.admission import Admission, Caller
from webui.generation.requests import Txt2ImgRequest

FAST = dict(steps=2, width=64, height=64, sampler_name="Euler", checkpoint="tiny-a.safetensors")
A1111_INFOTEXT = ("a lighthouse on a cliff, stormy sea\nNegative prompt: blurry\nSteps: 20, Sampler: DPM++ 2M, "
                  "CFG scale: 7, Seed: 1234, Size: 64x64, Model hash: abcdef1234, Model: dreamshaper_8")


def generate(easel, prompt: str, seed: int, owner: str = "tester") -> int:
    job = Admission(easel).submit("txt2img", Txt2ImgRequest(prompt=prompt, seed=seed, **FAST),
                                  Caller(owner=owner, user=owner if owner != "tester" else None)).job
    assert job.wait(120) and job.error is None, job.error
    row = easel.gallery.index.get_by_path(job.result.paths[0])
    assert row is not None  # indexed by the store's hook, no scan needed
    return row.id


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture()
def client(easel):
    with api_client(easel) as c:
        yield c


def test_saved_images_are_found_by_words_and_filters(easel, client):
    red = generate(easel, "a red circle on the left", 11)
    blue = generate(easel, "a blue square at the top", 12)
    found = client.get("/easel/v1/images", params={"q": "circle"}).json()
    assert [i["id"] for i in found["images"]] == [red] and found["total"] == 1
    image = found["images"][0]
    assert image["prompt"] == "a red circle on the left" and image["seed"] == 11 and image["kind"] == "txt2img-images"
    assert image["parameters"]["Steps"] in (2, "2")
    assert [i["id"] for i in client.get("/easel/v1/images", params={"q": "seed:12"}).json()["images"]] == [blue]
    assert [i["id"] for i in client.get("/easel/v1/images", params={"q": "-circle"}).json()["images"]] == [blue]
    everything = client.get("/easel/v1/images").json()
    assert [i["id"] for i in everything["images"]] == [blue, red]  # newest first
    assert client.get("/easel/v1/images", params={"q": 'NEAR("a" *'}).status_code == 200  # odd text is text
    assert client.get("/easel/v1/images", params={"page_size": 0}).status_code == 422


def test_files_and_thumbnails_by_id(easel, client):
    row_id = generate(easel, "a green star", 5)
    r = client.get(f"/easel/v1/images/{row_id}/file")
    assert r.status_code == 200
    png = Image.open(io.BytesIO(r.content))
    assert png.size == (64, 64) and "a green star" in png.info["parameters"]
    thumb = client.get(f"/easel/v1/images/{row_id}/thumb")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(thumb.content)).size == (64, 64)  # never larger than the picture
    assert client.get("/easel/v1/images/999/file").status_code == 404
    assert client.get(f"/easel/v1/images/{row_id}").json()["url"] == f"/easel/v1/images/{row_id}/file"


def test_pictures_from_other_tools_are_found_after_a_rescan(easel, client):
    folder = easel.settings.outputs_dir / "from-a1111"
    folder.mkdir(parents=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111_INFOTEXT)
    Image.new("RGB", (64, 64), "navy").save(folder / "00001-1234.png", pnginfo=info)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + "a castle in the snow\nSteps: 20, Seed: 77".encode("utf-16-be")
    Image.new("RGB", (64, 64), "white").save(folder / "castle.jpg", exif=exif)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    counts = client.post("/easel/v1/images/rescan").json()
    assert counts["added"] == 2 and counts["skipped"] == 1
    lighthouse = client.get("/easel/v1/images", params={"q": "lighthouse model:dreamshaper"}).json()["images"]
    assert len(lighthouse) == 1 and lighthouse[0]["seed"] == 1234 and lighthouse[0]["sampler"] == "DPM++ 2M"
    assert client.get("/easel/v1/images", params={"q": "castle"}).json()["total"] == 1
    (folder / "castle.jpg").unlink()
    assert client.post("/easel/v1/images/rescan").json()["removed"] == 1
    assert client.get("/easel/v1/images", params={"q": "castle"}).json()["total"] == 0


def test_reverse_search_finds_the_picture_and_its_prompt_kin(easel, client):
    ids = [generate(easel, p, s) for p, s in (("a red circle", 1), ("a red circle at night", 2),
                                              ("a yellow triangle", 3))]
    with Image.open(easel.gallery.index.get(ids[0]).path) as original:
        copy = original.convert("RGB").resize((48, 48))
    r = client.post("/easel/v1/images/similar", json={"image": b64(copy, "JPEG")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["duplicates"][0]["id"] == ids[0]
    by_id = client.post("/easel/v1/images/similar", json={"id": ids[0]}).json()
    assert ids[0] not in [i["id"] for i in by_id["prompt"]] and by_id["prompt"][0]["id"] == ids[1]
    text = client.post("/easel/v1/images/similar", json={"text": "red circle"}).json()
    assert {i["id"] for i in text["prompt"]} == {ids[0], ids[1]}
    assert client.post("/easel/v1/images/similar", json={}).status_code == 422
    assert client.post("/easel/v1/images/similar", json={"image": "bm90IGFuIGltYWdl"}).status_code == 422


def test_star_and_delete_into_the_trash(easel, client):
    row_id = generate(easel, "a purple square", 8)
    path = easel.gallery.index.get(row_id).path
    assert client.post(f"/easel/v1/images/{row_id}/star", json={"starred": True}).json()["starred"] is True
    assert [i["id"] for i in client.get("/easel/v1/images", params={"q": "starred:yes"}).json()["images"]] == [row_id]
    assert client.delete(f"/easel/v1/images/{row_id}").json() == {"deleted": row_id}
    assert not path.exists()
    trashed = list((easel.settings.outputs_dir / "trash").rglob(path.name))
    assert len(trashed) == 1 and trashed[0].read_bytes()[:4] == b"\x89PNG"
    assert client.get(f"/easel/v1/images/{row_id}").status_code == 404
    assert client.post("/easel/v1/images/rescan").json()["added"] == 0  # the trash is not indexed


def test_with_logins_each_user_sees_their_own_and_admins_all(easel):
    users = {"alice": "alice-pw", "bob": "bob-pw", "root": "root-pw"}
    easel.manager.preferred = "tiny-a.safetensors"
    easel.settings = replace(easel.settings, api=True, nowebui=True, ui_credentials=users, admin_users=("root",))
    alice_id = generate(easel, "alice's red circle", 1, owner="alice")
    bob_id = generate(easel, "bob's blue circle", 2, owner="bob")
    with TestClient(build_app(easel, easel.settings)) as client:
        def ids(user: str, q: str = "circle") -> list[int]:
            r = client.get("/easel/v1/images", params={"q": q}, auth=(user, users[user]))
            assert r.status_code == 200, r.text
            return [i["id"] for i in r.json()["images"]]
        assert ids("alice") == [alice_id] and ids("bob") == [bob_id]
        assert sorted(ids("root")) == sorted([alice_id, bob_id])
        for route in (f"/easel/v1/images/{bob_id}", f"/easel/v1/images/{bob_id}/file",
                      f"/easel/v1/images/{bob_id}/thumb"):
            assert client.get(route, auth=("alice", users["alice"])).status_code == 404, route
        assert client.delete(f"/easel/v1/images/{bob_id}", auth=("alice", users["alice"])).status_code == 404
        assert client.get(f"/easel/v1/images/{bob_id}/file", auth=("bob", users["bob"])).status_code == 200
        similar = client.post("/easel/v1/images/similar", json={"text": "circle"}, auth=("alice", users["alice"]))
        assert [i["id"] for i in similar.json()["prompt"]] == [alice_id]
        assert client.post("/easel/v1/images/rescan", auth=("alice", users["alice"])).status_code == 403
        assert client.post("/easel/v1/images/rescan", auth=("root", users["root"])).status_code == 200
        assert client.get("/easel/v1/images").status_code == 401


def test_searching_while_a_job_generates_and_saves(easel, client):
    generate(easel, "a white star", 1)
    job = Admission(easel).submit("txt2img", Txt2ImgRequest(prompt="an orange triangle", seed=3, batch_size=2,
                                                            n_iter=3, **FAST), Caller(owner="tester")).job
    answers = []
    while not job.done:
        r = client.get("/easel/v1/images", params={"q": "star OR triangle"})
        answers.append(r.status_code)
    assert job.wait(120) and job.error is None
    assert answers and set(answers) == {200}
    assert client.get("/easel/v1/images", params={"q": "triangle"}).json()["total"] == 6


def test_the_background_embedder_waits_while_a_job_runs(easel, tmp_path):
    """Embedding never competes with a generation: the background thread works only while the queue is idle."""
    import threading

    import numpy as np

    from webui.gallery.index import GalleryIndex
    from webui.gallery.service import Gallery

    class Counting:
        name = "counting"

        def __init__(self):
            self.calls = 0

        def embed_images(self, images):
            self.calls += 1
            return np.ones((len(images), 4), np.float32) / 2

        def embed_text(self, texts):
            return np.ones((len(texts), 4), np.float32) / 2

    outputs = tmp_path / "outputs"
    outputs.mkdir()
    for i in range(5):
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(outputs / f"{i}.png")
    running = threading.Event()
    running.set()
    embedder = Counting()
    gallery = Gallery(GalleryIndex(tmp_path / "g.sqlite"), outputs, tmp_path / "thumbs", embedder=lambda: embedder,
                      busy=running.is_set)
    gallery.start()
    try:
        deadline = time.time() + 30
        while gallery.index.count() < 5 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        assert gallery.index.count() == 5 and embedder.calls == 0  # indexed, but no embedding while "busy"
        running.clear()
        while gallery.index.missing_vectors("counting", 10) and time.time() < deadline:
            time.sleep(0.05)
        assert not gallery.index.missing_vectors("counting", 10) and embedder.calls >= 1
    finally:
        gallery.close()
    assert easel.gallery.busy() is False  # the app's gate reads its queue (no job running)
