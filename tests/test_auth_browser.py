"""A shared instance with logins, in a real browser: sign in, generate, and the job is the user's."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import pytest

from browser import chromium_page, data_dir_with_tiny_model, easel_server, requires_chromium, set_number

pytestmark = [pytest.mark.browser, requires_chromium]
PASSWORD = "pa:ss word"


def guarded_server(data: Path, *extra: str):
    """`app.py` with logins; ready once its (public) sign-in page answers."""
    return easel_server(data, *extra, ready_path="/login")


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_root):
    data = data_dir_with_tiny_model(tmp_path_factory.mktemp("auth-ui-data"), model_root)
    shutil.copy(model_root / "models" / "Stable-diffusion" / "tiny-b.safetensors", data / "models" / "Stable-diffusion")
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
        generate(page)
    jobs = httpx.get(url + "/easel/v1/jobs", auth=("alice", PASSWORD)).json()["jobs"]
    assert [j["owner"] for j in jobs if j["kind"] == "txt2img"] == ["alice"]  # the UI job is alice's
    assert httpx.get(url + "/easel/v1/jobs", auth=("bob", "hunter2")).json()["jobs"] == []
    assert httpx.get(url + "/").status_code == 401


def generate(page) -> str:
    """A two-step txt2img from the page; its infotext."""
    page.fill("#txt2img_prompt textarea", "a red circle")
    set_number(page, "txt2img_steps", 2)
    page.click("#txt2img_generate")
    page.wait_for_function("document.querySelector('#txt2img_info textarea').value.includes('Seed: ')",
                           timeout=120_000)
    return page.input_value("#txt2img_info textarea")


def sign_in(page, url: str, user: str, password: str) -> None:
    page.goto(url + "/")
    page.wait_for_selector("input[name=password]")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_selector("#txt2img_prompt textarea")


def test_the_checkpoint_picker_is_each_users_own_choice(server):
    """Picking a checkpoint loads it as a job of the user who picked it (not an anonymous one that could
    evict someone else's model), and another user's page keeps its own choice."""
    url, _ = server
    with chromium_page() as page:
        sign_in(page, url, "bob", "hunter2")
        page.locator("#sd_model_checkpoint input").click()
        page.get_by_role("option", name=re.compile("tiny-b")).click()
        page.wait_for_selector("#sd_model_status .easel-notice", timeout=120_000)
        assert "Loaded tiny-b" in page.inner_text("#sd_model_status")
    loads = [j for j in httpx.get(url + "/easel/v1/jobs", auth=("bob", "hunter2")).json()["jobs"] if j["kind"] == "load"]
    assert loads and all(j["owner"] == "bob" for j in loads)
    with chromium_page() as page:
        sign_in(page, url, "alice", PASSWORD)
        assert page.input_value("#sd_model_checkpoint input").startswith("tiny-a")
        assert "Model: tiny-a," in generate(page)


def test_signing_out_clears_the_session_on_the_server(server):
    url, _ = server
    with chromium_page() as page:
        sign_in(page, url, "alice", PASSWORD)
        cookie = next(c for c in page.context.cookies() if c["name"] == "easel-session")["value"]
        page.goto(url + "/logout")
        page.wait_for_selector("input[name=password]")
    assert httpx.get(url + "/config", cookies={"easel-session": cookie}).status_code == 401
