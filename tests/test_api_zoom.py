"""Easel's zoom job over HTTP: submit, poll, fetch the mp4; bad input is a 422 naming the field."""
from __future__ import annotations

import base64
import io

import imageio.v3 as iio
from PIL import Image

from apiclient import api_client
from test_api import wait_job

ZOOM = {"prompt": "a red circle", "steps": 2, "seed": 3, "width": 64, "height": 64, "keyframes": 1,
        "fps": 4, "seconds_per_keyframe": 1.0, "sampler_name": "Euler"}


def test_a_zoom_job_runs_and_its_video_can_be_fetched(easel, tmp_path):
    with api_client(easel) as client:
        answer = client.post("/easel/v1/zoom", json=ZOOM)
        assert answer.status_code == 202, answer.text
        status = wait_job(client, answer.json()["id"], timeout=120)
        assert status["state"] == "done" and status["kind"] == "zoom"
        video = client.get(f"/easel/v1/jobs/{status['id']}/video")
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
        path = tmp_path / "zoom.mp4"
        path.write_bytes(video.content)
        frames = list(iio.imiter(path))
        assert len(frames) >= 4 and frames[0].shape[:2] == (64, 64)


def test_zoom_with_an_init_image_and_bad_input(easel):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 0, 200)).save(buf, format="PNG")
    good = base64.b64encode(buf.getvalue()).decode()
    with api_client(easel) as client:
        assert client.post("/easel/v1/zoom", json={**ZOOM, "init_image": good}).status_code == 202
        for bad, field in [({"init_image": "###"}, "init_image"), ({"keyframes": 0}, "keyframes"),
                           ({"checkpoint": "../../etc/passwd"}, "checkpoint"), ({"direction": "sideways"}, "direction"),
                           ({"batch_size": 2}, "batch_size")]:
            r = client.post("/easel/v1/zoom", json={**ZOOM, **bad})
            assert r.status_code == 422, (bad, r.text)
            assert field in r.text
        other = client.get("/easel/v1/jobs/nope/video")
        assert other.status_code == 404
