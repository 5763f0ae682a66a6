"""A shared instance with logins, in a real browser: sign in, generate, and the job is the user's."""
from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from browser import chromium_page, data_dir_with_tiny_model, easel_server, requires_chromium

pytestmark = [pytest.mark.browser, requires_chromium]
PASSWORD = "pa:ss word"


def guarded_server(data: Path, *extra: str):
    """`app.py` with logins; ready once its (public) sign-in page answers."""
    return easel_server(data, *extra, ready_path="/login")


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_root):
    data = data_dir_with_tiny_model(tmp_path_factory.mktemp("auth-ui-data"), model_root)
    with guarded_server(data, "--api", "--gradio-auth", f"alice:{PASSWORD},bob:hunter2") as url:
        yield url, data


def test_sign_in_then_generate_as_that_user(server):
    url, _ = server
    with chromium_page() as page:
        page.goto(url + "/")
        page.wait_for_selector("input[name=password]")
        assert "/login" in page.url
        page.fill("input[name=username]", "alice")
        page.fill("input[name=password]", "wrong")
        page.click("button[type=submit]")
        page.wait_for_selector("text=Wrong user name or password")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_selector("#txt2img_prompt textarea")
        page.fill("#txt2img_prompt textarea", "a red circle")
        page.locator("#txt2img_steps input[type=number]").fill("2")
        page.locator("#txt2img_steps input[type=number]").press("Tab")
        page.click("#txt2img_generate")
        page.wait_for_function("document.querySelector('#txt2img_info textarea').value.includes('Seed: ')",
                               timeout=120_000)
    jobs = httpx.get(url + "/easel/v1/jobs", auth=("alice", PASSWORD)).json()["jobs"]
    assert [j["owner"] for j in jobs if j["kind"] == "txt2img"] == ["alice"]  # the UI job is alice's
    assert httpx.get(url + "/easel/v1/jobs", auth=("bob", "hunter2")).json()["jobs"] == []
    assert httpx.get(url + "/").status_code == 401
