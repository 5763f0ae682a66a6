"""With logins on, the Gallery tab and the thumbnail files it shows follow the owner rule too (the API routes:
tests/test_gallery_api.py)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from app import build_app
from webui.admission import Admission, Caller
from webui.auth import Accounts, Gate
from webui.generation.requests import Txt2ImgRequest
from webui.ui.gallery import GalleryTab

USERS = {"alice": "alice-pw", "bob": "bob-pw", "root": "root-pw"}
FAST = dict(steps=2, width=64, height=64, sampler_name="Euler", checkpoint="tiny-a.safetensors")


@pytest.fixture()
def with_logins(tmp_path, model_root):
    from webui.services import Easel
    from webui.settings import settings_from_args
    settings = settings_from_args(["--data-dir", str(tmp_path), "--device", "cpu", "--api", "--admin-users", "root",
                                   "--gradio-auth", ",".join(f"{u}:{p}" for u, p in USERS.items()),
                                   "--ckpt-dir", str(model_root / "models" / "Stable-diffusion")])
    easel = Easel.create(settings)
    yield easel
    easel.close()


def made_by(easel, user: str, prompt: str) -> int:
    job = Admission(easel).submit("txt2img", Txt2ImgRequest(prompt=prompt, seed=1, **FAST),
                                  Caller(owner=user, user=user)).job
    assert job.wait(120) and job.error is None, job.error
    return easel.gallery.index.get_by_path(job.result.paths[0]).id


def test_the_tab_lists_each_users_own_and_an_admins_all(with_logins):
    easel = with_logins
    alice, bob = made_by(easel, "alice", "a red circle"), made_by(easel, "bob", "a blue circle")
    tab = GalleryTab(easel.gallery, Gate(Accounts.from_settings(easel.settings)))

    def ids(user: str) -> list[int]:
        request = SimpleNamespace(username=user, session_hash="x")
        return tab.search("circle", "newest", 1, request)[5]
    assert ids("alice") == [alice] and ids("bob") == [bob] and sorted(ids("root")) == sorted([alice, bob])
    similar = tab.similar(SimpleNamespace(username="alice", session_hash="x"), text="circle")
    assert similar[5] == [alice]


def test_thumbnail_files_are_guarded_like_outputs(with_logins):
    easel = with_logins
    bob = easel.gallery.index.get(made_by(easel, "bob", "a blue circle"))
    thumb = easel.gallery.thumbnail(bob)
    with TestClient(build_app(easel, easel.settings), follow_redirects=False) as client:
        url = f"/gradio_api/file={thumb}"
        assert client.get(url, auth=("bob", USERS["bob"])).status_code == 200
        assert client.get(url, auth=("alice", USERS["alice"])).status_code == 404
        assert client.get(url, auth=("root", USERS["root"])).status_code == 200
        assert client.get(f"/gradio_api/file={bob.path}", auth=("alice", USERS["alice"])).status_code == 404
