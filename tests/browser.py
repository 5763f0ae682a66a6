"""Helpers for browser tests: start Easel as a real server, drive Debian's Chromium with Playwright."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

requires_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="Debian chromium is not installed (./launch.sh test installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def easel_server(data_dir: Path, *extra: str, timeout: float = 180, ready_path: str = "/",
                 env: dict[str, str] | None = None, script: Path | None = None):
    """Run `app.py` on a free port until the block ends; yields the base URL once `ready_path` answers
    (a 401/403 counts: with logins on, every route refuses anonymous requests). `script` runs instead of
    app.py (tests/serve_with_spandrel.py). Also used by bench/api_load.py."""
    port = free_port()
    log = open(data_dir / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, str(script or ROOT / "app.py"), "--data-dir", str(data_dir), "--port", str(port),
         "--device", "cpu", *extra],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError("Easel exited:\n" + (data_dir / "server.log").read_text()[-3000:])
            try:
                urllib.request.urlopen(url + ready_path, timeout=2)
                break
            except urllib.error.HTTPError as e:
                if e.code in (401, 403):  # up, and refusing anonymous requests as it should
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("Easel did not start:\n" + (data_dir / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def data_dir_with_tiny_model(folder: Path, model_root: Path) -> Path:
    """A fresh --data-dir whose only checkpoint is the tests' tiny-a.safetensors."""
    ckpts = folder / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    shutil.copy(model_root / "models" / "Stable-diffusion" / "tiny-a.safetensors", ckpts / "tiny-a.safetensors")
    return folder


def set_number(page, elem_id: str, value) -> None:
    """Type into a Gradio slider's number box and leave it, as a person would."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


@contextmanager
def chromium_page():
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="easel-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
                viewport={"width": 1400, "height": 1000},
            )
            try:
                page = context.pages[0] if context.pages else context.new_page()
                page.set_default_timeout(60_000)
                yield page
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@contextmanager
def easel_page(url: str):
    """Chromium on Easel's page, once the txt2img prompt is there."""
    with chromium_page() as page:
        page.goto(url + "/")
        page.wait_for_selector("#txt2img_prompt textarea")
        yield page
