"""Infotext writing/parsing and the output store's naming and atomic saves."""
from __future__ import annotations

import datetime
import threading

import pytest
from PIL import Image

from webui.images.infotext import create_infotext, parse_infotext, quote
from webui.images.store import ImageStore, read_infotext

A1111_SAMPLE = (
    "masterpiece, (best quality:1.2), 1girl\n"
    "Negative prompt: lowres, bad anatomy\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 2345, Size: 512x768, "
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.10.1'
)


def test_parse_a1111_infotext():
    p = parse_infotext(A1111_SAMPLE)
    assert p["Prompt"] == "masterpiece, (best quality:1.2), 1girl"
    assert p["Negative prompt"] == "lowres, bad anatomy"
    assert p["Steps"] == "28" and p["Sampler"] == "DPM++ 2M" and p["Schedule type"] == "Karras"
    assert p["Size-1"] == 512 and p["Size-2"] == 768
    assert p["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert p["Version"] == "v1.10.1"


def test_quoting_and_round_trip():
    assert quote("plain") == "plain"
    assert quote("a, b") == '"a, b"' and quote("k: v") == '"k: v"' and quote('x\ny') == '"x\\ny"'
    params = {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7.5, "Seed": 1, "Size": "64x64",
              "Model": "my, model", "Note": 'say "hi": now', "Skipped": None}
    text = create_infotext("multi\nline prompt", "bad, worse", params)
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "multi\nline prompt"
    assert parsed["Negative prompt"] == "bad, worse"
    assert parsed["Model"] == "my, model" and parsed["Note"] == 'say "hi": now'
    assert parsed["CFG scale"] == "7.5" and "Skipped" not in parsed
    assert text.splitlines()[-1].startswith("Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 1, Size: 64x64")


def test_prompt_only_and_no_negative():
    p = parse_infotext("just a prompt")
    assert p == {"Prompt": "just a prompt", "Negative prompt": ""}


@pytest.fixture()
def store(tmp_path):
    return ImageStore(tmp_path / "outputs", today=lambda: datetime.date(2026, 11, 21))


def test_store_names_counts_and_keeps_infotext(store, tmp_path):
    img = Image.new("RGB", (8, 8), "red")
    a = store.save(img, "a prompt\nSteps: 1, Sampler: Euler, Seed: 42", "txt2img-images", 42)
    b = store.save(img, "x", "txt2img-images", 7)
    assert a == tmp_path / "outputs" / "txt2img-images" / "2026-11-21" / "00000-42.png"
    assert b.name == "00001-7.png"
    with Image.open(a) as im:
        assert read_infotext(im) == "a prompt\nSteps: 1, Sampler: Euler, Seed: 42"
    # nothing but the two PNGs: no temp files left behind
    assert sorted(p.name for p in a.parent.iterdir()) == ["00000-42.png", "00001-7.png"]


def test_store_never_overwrites_and_is_thread_safe(store):
    img = Image.new("RGB", (8, 8), "blue")
    folder = store.folder("txt2img-images")
    folder.mkdir(parents=True)
    (folder / "00005-1.png").write_bytes(b"someone else's file")
    paths: list = []
    threads = [threading.Thread(target=lambda i=i: paths.append(store.save(img, f"n{i}", "txt2img-images", i)))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({p.name for p in paths}) == 8
    assert sorted(int(p.name[:5]) for p in paths) == list(range(6, 14))
    assert (folder / "00005-1.png").read_bytes() == b"someone else's file"


def test_store_rejects_path_tricks(store):
    with pytest.raises(ValueError):
        store.folder("../etc")


def test_png_info_reads_a1111_jpegs_and_webps(tmp_path):
    """A1111 writes the infotext of a JPEG/WEBP as an EXIF user comment (UTF-16 after `UNICODE\\0`)."""
    from webui.ui.pnginfo import read_image_info

    text = "a castle in the snow\nNegative prompt: fog\nSteps: 20, Sampler: Euler a, Seed: 77, Size: 64x64"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + text.encode("utf-16-be")
    for suffix in ("jpg", "webp"):
        path = tmp_path / f"castle.{suffix}"
        Image.new("RGB", (64, 64), "white").save(path, exif=exif)
        shown, table = read_image_info(str(path))
        assert shown == text and "Euler a" in table, suffix
        with Image.open(path) as image:
            assert read_infotext(image) == text
