"""The gallery index: text search and every filter, owners, paging, scanning files from A1111/ComfyUI/EXIF,
the store hook, concurrent writers, near-duplicates, prompt neighbours, star/delete, and vector storage."""
from __future__ import annotations

import datetime
import io
import json
import logging
import os
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, PngImagePlugin

from webui.gallery import GalleryIndex, ImageRecord
from webui.images.infotext import parse_infotext
from webui.images.store import ImageStore, png_bytes


def when(y: int, m: int, d: int, hour: int = 12) -> float:
    return time.mktime(datetime.datetime(y, m, d, hour).timetuple())


def infotext(prompt: str, negative: str = "", **fields: object) -> str:
    params = {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7, "Seed": 1, "Size": "512x512"}
    params.update({k.replace("_", " "): v for k, v in fields.items()})
    line = ", ".join(f"{k}: {json.dumps(v) if isinstance(v, str) and (',' in v or ':' in v) else v}"
                     for k, v in params.items())
    return f"{prompt}\nNegative prompt: {negative}\n{line}" if negative else f"{prompt}\n{line}"


def record(name: str, text: str, owner: str | None, kind: str, created: float, size: tuple[int, int] = (512, 512),
           ) -> ImageRecord:
    return ImageRecord(Path("/pictures") / kind / f"{name}.png", owner, kind, created, size[0], size[1],
                       parse_infotext(text), "parameters")


CRAFTED = {
    "fox": record("fox", infotext("a red fox in a snowy forest, <lora:add_detail:0.8>", "blurry, lowres",
                                  Sampler="DPM++ 2M", Seed=1111, Size="512x768", Model_hash="6ce0161689",
                                  Model="dreamshaper_8", Lora_hashes="add_detail: 7c6bad76eb54"),
                  "alice", "txt2img-images", when(2024, 5, 2), (512, 768)),
    "car": record("car", infotext("a blue car on a red bridge", Sampler="Euler a", Seed=2222,
                                  Model="v1-5-pruned-emaonly"), "bob", "img2img-images", when(2024, 5, 10)),
    "fisher": record("fisher", infotext("portrait of an old fisherman, detailed face", "cartoon, red",
                                        Sampler="Euler", Seed=3333, Size="768x512", Model="sdxl_base",
                                        Lora_hashes="film_grain: 0123456789ab"),
                     "alice", "txt2img-grids", when(2024, 6, 1), (768, 512)),
    "mountain": record("mountain", infotext("snowy mountain at dawn", Sampler="DPM++ 2M SDE", Seed=4444,
                                            Model="dreamshaper_8"), None, "extras-images", when(2024, 4, 20)),
    "sleeping": record("sleeping", infotext("red fox sleeping", Seed=5555), "bob", "zoom", when(2024, 5, 2, 18)),
    "odd": record("odd", 'say "hello" (masterpiece:1.2) NEAR(x) AND OR * {prompt} -minus', None, "txt2img-images",
                  when(2024, 3, 1)),
}


@pytest.fixture()
def index(tmp_path):
    gallery = GalleryIndex(tmp_path / "gallery.sqlite3")
    yield gallery
    gallery.close()


@pytest.fixture()
def crafted(index) -> dict[str, int]:
    ids = index.put_many(list(CRAFTED.values()))
    return dict(zip(CRAFTED, ids))


def names(page, crafted: dict[str, int]) -> set[str]:
    by_id = {v: k for k, v in crafted.items()}
    return {by_id[row.id] for row in page.rows}


def found(index, crafted, query: str, **kwargs) -> set[str]:
    page = index.search(query, page_size=500, **kwargs)
    assert page.total == len(page.rows)
    return names(page, crafted)


# -- text search --------------------------------------------------------------------------------------------------
def test_free_words_search_prompt_and_parameters_not_the_negative(index, crafted):
    assert found(index, crafted, "red fox") == {"fox", "sleeping"}
    assert found(index, crafted, "red") == {"fox", "car", "sleeping"}  # "fisher" has red only in its negative
    assert found(index, crafted, "RED Fox") == {"fox", "sleeping"}
    assert found(index, crafted, "dreamshaper") == {"fox", "mountain"}  # the Model field, in the parameters line
    assert found(index, crafted, "fish*") == {"fisher"}
    assert found(index, crafted, "") == set(CRAFTED)


def test_phrases_and_exclusions(index, crafted):
    assert found(index, crafted, '"red fox"') == {"fox", "sleeping"}
    assert found(index, crafted, '"fox red"') == set()
    assert found(index, crafted, '"red bridge"') == {"car"}
    assert found(index, crafted, "red -fox") == {"car"}
    assert found(index, crafted, '-"red fox"') == set(CRAFTED) - {"fox", "sleeping"}
    assert found(index, crafted, "-red") == {"fisher", "mountain", "odd"}
    assert found(index, crafted, "neg:red") == {"fisher"}
    assert found(index, crafted, "negative:blurry fox") == {"fox"}
    assert found(index, crafted, "fox -neg:blurry") == {"sleeping"}


def test_every_field_filter(index, crafted):
    assert found(index, crafted, "model:dream") == {"fox", "mountain"}
    assert found(index, crafted, "model:DREAMSHAPER_8") == {"fox", "mountain"}
    assert found(index, crafted, "model:6ce01") == {"fox"}  # a model hash prefix
    assert found(index, crafted, "-model:dream") == set(CRAFTED) - {"fox", "mountain"}  # rows without a model too
    assert found(index, crafted, "sampler:euler") == {"car", "fisher", "sleeping"}
    assert found(index, crafted, 'sampler:"euler a"') == {"car", "sleeping"}
    assert found(index, crafted, 'sampler:"DPM++ 2M SDE"') == {"mountain"}
    assert found(index, crafted, "seed:3333") == {"fisher"}
    assert found(index, crafted, "size:768x512") == {"fisher"}
    assert found(index, crafted, "size:512x768") == {"fox"}
    assert found(index, crafted, "lora:add") == {"fox"}
    assert found(index, crafted, "lora:film_grain") == {"fisher"}
    assert found(index, crafted, "kind:txt2img") == {"fox", "odd"}
    assert found(index, crafted, "kind:grids") == {"fisher"}
    assert found(index, crafted, "kind:img2img-images") == {"car"}
    assert found(index, crafted, "kind:zoom") == {"sleeping"}
    assert found(index, crafted, "kind:extras") == {"mountain"}
    assert found(index, crafted, "after:2024-05-02") == {"fox", "car", "fisher", "sleeping"}
    assert found(index, crafted, "before:2024-05-02") == {"mountain", "odd"}
    assert found(index, crafted, "after:2024-05-03 before:2024-06-01") == {"car"}
    assert found(index, crafted, "fox model:dream after:2024-05-01 kind:txt2img") == {"fox"}
    assert found(index, crafted, "seed:3333 size:512x512") == set()


def test_star_and_starred_filter(index, crafted):
    assert index.star(crafted["fisher"]) and index.star(crafted["car"])
    assert index.star(crafted["car"], False)
    assert not index.star(999_999)
    assert found(index, crafted, "starred:yes") == {"fisher"}
    assert found(index, crafted, "starred:no") == set(CRAFTED) - {"fisher"}
    assert found(index, crafted, "-starred:yes") == set(CRAFTED) - {"fisher"}
    assert index.get(crafted["fisher"]).starred
    # re-indexing the file keeps its star
    index.put_many([CRAFTED["fisher"]])
    assert index.get(crafted["fisher"]).starred


def test_bad_filter_values_are_ignored_with_a_note(index, crafted):
    page = index.search("fox seed:abc size:big after:yesterday starred:maybe", page_size=100)
    assert names(page, crafted) == {"fox", "sleeping"}
    assert len(page.notes) == 4 and any("seed:abc" in n for n in page.notes)
    assert found(index, crafted, "foo:bar") == set()  # an unknown field is text
    assert found(index, crafted, "(masterpiece:1.2)") == {"odd"}


@pytest.mark.parametrize("query", [
    '"', '""', '"""', '"hello', 'hello"', "(", ")", "((red", "red)", "NEAR(", "NEAR(red fox, 2)", "*", "**", "red*",
    "AND", "OR", "NOT", "red AND", "OR fox", "NOT red", "^red", "-", "--", "- -", ":", "model:", "seed:", "-model:",
    "{prompt}: red", "prompt:red", "negative:", '"a" OR "b"', "' ; DROP TABLE images; --", "\x00", "red\x00fox",
    "🦊 fox", "\\", "%", "_", "model:%", "lora:_", "kind:%", "sampler:\\", "a" * 5000, "red " * 300,
    "col:(x)", "+red", '"(" ")"', "{a b}: c", "-*", '-"', "size:0x0", "seed:99999999999999999999999",
])
def test_malicious_query_text_never_raises(index, crafted, query):
    page = index.search(query, page_size=10)
    assert page.total >= len(page.rows)
    assert index.search(query, sort="relevance").total == page.total
    assert index.count() == len(CRAFTED)  # nothing was dropped or damaged


def test_malicious_text_still_matches_as_text(index, crafted):
    assert found(index, crafted, "NEAR(") == {"odd"}
    assert found(index, crafted, '"hello') == {"odd"}
    assert found(index, crafted, "{prompt}") == {"odd"}
    assert found(index, crafted, "AND OR") == {"odd"}
    assert found(index, crafted, "model:%") == set()  # a LIKE wildcard is a literal character
    assert found(index, crafted, "-minus") == set(CRAFTED) - {"odd"}


def test_owner_sees_own_images_only(index, crafted):
    assert found(index, crafted, "", owner="alice") == {"fox", "fisher"}
    assert found(index, crafted, "red", owner="bob") == {"car", "sleeping"}
    assert found(index, crafted, "red") == {"fox", "car", "sleeping"}
    assert found(index, crafted, "", owner="mallory") == set()
    assert index.count("alice") == 2 and index.count() == len(CRAFTED)
    assert index.get(crafted["car"]).owner == "bob"


def test_paging_totals_and_order(index):
    start = when(2024, 1, 1)
    ids = index.put_many([record(f"f{i}", infotext(f"filler picture number {i}", Seed=i), "u", "txt2img-images",
                                 start + i * 60) for i in range(30)])
    pages = [index.search("filler", page=p, page_size=7) for p in range(1, 7)]
    assert all(p.total == 30 and p.pages == 5 for p in pages)
    assert [len(p.rows) for p in pages] == [7, 7, 7, 7, 2, 0]
    seen = [row.id for p in pages for row in p.rows]
    assert seen == ids[::-1]  # newest first, no row twice, none missing
    oldest = index.search("filler", page_size=3, sort="oldest")
    assert [r.id for r in oldest.rows] == ids[:3]
    assert index.search("filler", page_size=10_000).page_size == 500
    with pytest.raises(ValueError):
        index.search("filler", sort="random")


def test_relevance_ranks_by_bm25(index):
    long_id, short_id = index.put_many([
        record("long", infotext("a castle " + " ".join(f"word{i}" for i in range(40))), None, "t", when(2024, 2, 2)),
        record("short", infotext("castle castle"), None, "t", when(2024, 1, 1)),
    ])
    assert [r.id for r in index.search("castle").rows] == [long_id, short_id]  # newest
    ranked = index.search("castle", sort="relevance").rows
    assert [r.id for r in ranked] == [short_id, long_id] and ranked[0].score > ranked[1].score > 0


# -- files: scanning and the store hook ---------------------------------------------------------------------------
def picture(seed: int, size: tuple[int, int] = (192, 160)) -> Image.Image:
    """A picture with structure (overlapping shapes), different for every seed."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(10):
        x, y = rng.randrange(-20, size[0]), rng.randrange(-20, size[1])
        box = [x, y, x + rng.randrange(20, 110), y + rng.randrange(20, 110)]
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return image


def exif_with_comment(raw: bytes, little_endian: bool = False) -> Image.Exif:
    exif = Image.Exif()
    if little_endian:
        exif.endian = "<"
    exif[0x8769] = {0x9286: raw}
    return exif


def comfy_graph() -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl/juggernaut_v9.safetensors"}},
        "10": {"class_type": "LoraLoader", "inputs": {"lora_name": "styles/ink_wash.safetensors", "strength_model": 1,
                                                      "model": ["4", 0], "clip": ["4", 1]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse in a thunderstorm", "clip": ["10", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "sunny, watermark", "clip": ["10", 1]}},
        "11": {"class_type": "PrimitiveNode", "inputs": {"value": 987654}},
        "3": {"class_type": "KSampler", "inputs": {"seed": ["11", 0], "steps": 30, "cfg": 5.5,
                                                   "sampler_name": "euler_ancestral", "scheduler": "karras",
                                                   "denoise": 1, "model": ["10", 0], "positive": ["6", 0],
                                                   "negative": ["7", 0], "latent_image": ["5", 0]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
    }


@pytest.fixture()
def folder(tmp_path) -> Path:
    """A folder of files written by other tools, in A1111's layout."""
    root = tmp_path / "outputs"
    day = root / "txt2img-images" / "2024-05-01"
    day.mkdir(parents=True)
    (day / "00000-1.png").write_bytes(png_bytes(picture(1), infotext("an A1111 png of a violet owl", Seed=11)))
    picture(2).save(day / "00001-2.jpg", exif=exif_with_comment(
        b"UNICODE\x00" + infotext("a jpeg of a golden koi, ünïcode", Seed=12).encode("utf-16-be")))
    picture(3).save(day / "00002-3.jpeg", exif=exif_with_comment(
        b"UNICODE\x00" + infotext("a little endian comment about a crimson heron", Seed=13).encode("utf-16-le"),
        little_endian=True))
    picture(4).save(day / "00003-4.webp", exif=exif_with_comment(
        b"ASCII\x00\x00\x00" + infotext("a webp of a silver tram", Seed=14).encode()))
    comfy = root / "comfy"
    comfy.mkdir()
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(comfy_graph()))
    info.add_text("workflow", "{}")
    picture(5).save(comfy / "ComfyUI_00001_.png", pnginfo=info)
    picture(6).save(comfy / "plain.png")
    (comfy / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (comfy / "notes.txt").write_text("not a picture")
    (comfy / ".hidden.png").write_bytes(png_bytes(picture(7), infotext("hidden violet owl")))
    (root / "trash" / "txt2img-images").mkdir(parents=True)
    (root / "trash" / "txt2img-images" / "old.png").write_bytes(png_bytes(picture(8), infotext("trashed violet owl")))
    return root


def test_scan_reads_a1111_exif_and_comfyui_files(index, folder, caplog):
    with caplog.at_level(logging.WARNING):
        counts = index.scan([folder])
    assert (counts.added, counts.updated, counts.removed, counts.skipped) == (6, 0, 0, 1)
    assert "broken.png" in caplog.text
    for query, name, seed in [("violet owl", "00000-1.png", 11), ("golden koi", "00001-2.jpg", 12),
                              ("crimson heron", "00002-3.jpeg", 13), ("silver tram", "00003-4.webp", 14)]:
        rows = index.search(query).rows
        assert [r.path.name for r in rows] == [name], query
        assert rows[0].seed == seed and rows[0].kind == "txt2img-images"
    assert index.search("ünïcode").rows[0].path.name == "00001-2.jpg"
    assert index.search("unicode").total == 1  # accents folded
    comfy = index.search("lighthouse thunderstorm").rows
    assert [r.path.name for r in comfy] == ["ComfyUI_00001_.png"]
    row = comfy[0]
    assert (row.seed, row.sampler, row.model, row.loras, row.kind) == (987654, "Euler a", "juggernaut_v9",
                                                                       ("ink_wash",), "comfy")
    assert row.negative_prompt == "sunny, watermark"
    assert row.parameters["Steps"] == "30" and row.parameters["CFG scale"] == "5.5"
    assert row.parameters["Schedule type"] == "Karras"
    assert index.search("lora:ink seed:987654 neg:watermark").total == 1
    plain = index.get_by_path(folder / "comfy" / "plain.png")
    assert plain is not None and plain.prompt == "" and (plain.width, plain.height) == (192, 160)
    assert index.count() == 6  # not the hidden file, the trash, the text file or the broken picture


def test_rescan_updates_changed_and_removes_gone_files(index, folder):
    index.scan([folder])
    again = index.scan([folder])
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, 6)
    owl = folder / "txt2img-images" / "2024-05-01" / "00000-1.png"
    owl_id = index.get_by_path(owl).id
    owl.write_bytes(png_bytes(picture(1), infotext("an A1111 png of a violet owl, now with a hat", Seed=11)))
    os.utime(owl, ns=(time.time_ns(), time.time_ns() + 10**9))
    (folder / "txt2img-images" / "2024-05-01" / "00003-4.webp").unlink()
    third = index.scan([folder])
    assert (third.added, third.updated, third.removed) == (0, 1, 1)
    assert [r.id for r in index.search("hat").rows] == [owl_id]  # same row, new text
    assert index.search("silver tram").total == 0
    # a scan of one folder leaves rows of other folders alone
    assert index.scan([folder / "comfy"]).removed == 0 and index.count() == 5


def test_scan_names_owners_through_a_callback(index, folder):
    index.scan([folder], owner_of=lambda path: "carol" if path.suffix == ".png" else None)
    assert {r.path.name for r in index.search("", owner="carol").rows} == {"00000-1.png", "ComfyUI_00001_.png",
                                                                          "plain.png"}


def test_the_store_hook_indexes_every_saved_image(index, tmp_path):
    store = ImageStore(tmp_path / "outputs", today=lambda: datetime.date(2026, 1, 2), hooks=[index])
    path = store.save(picture(9), infotext("a teapot on the moon", Seed=77, Model="tiny-a"), "txt2img-images", 77,
                      owner="dana")
    rows = index.search("teapot model:tiny").rows
    assert [r.path for r in rows] == [path.resolve()]
    assert (rows[0].owner, rows[0].kind, rows[0].seed, rows[0].width) == ("dana", "txt2img-images", 77, 192)
    assert index.search("teapot", owner="someone else").total == 0
    # a later scan of the outputs finds nothing new and keeps the owner
    assert index.scan([tmp_path / "outputs"]).unchanged == 1
    assert index.get(rows[0].id).owner == "dana"


def test_concurrent_writers_and_searches(index, tmp_path):
    store = ImageStore(tmp_path / "outputs", hooks=[index])
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for n in range(8):
                store.save(picture(100 * worker + n, (48, 40)), infotext(f"worker{worker} image{n} comet"),
                           "txt2img-images", n, owner=f"user{worker}")
        except BaseException as e:  # collected: an exception in a thread would otherwise vanish
            errors.append(e)

    def read() -> None:
        try:
            for _ in range(40):
                index.search("comet -worker1 kind:txt2img", page_size=5, sort="relevance")
                index.similar_by_hash(picture(1, (48, 40)), limit=3)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)] + [threading.Thread(target=read)
                                                                                for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert index.search("comet").total == 32
    assert index.search("comet", owner="user2").total == 8
    assert index.search("worker3 image5").total == 1


# -- reverse search -----------------------------------------------------------------------------------------------
def test_near_duplicates_come_first(index, tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    ids = {}
    for seed in range(20):
        path = folder / f"{seed:02d}.png"
        picture(seed, (256, 224)).save(path)
        ids[seed] = index.add(path, owner="alice" if seed % 2 else "bob")
    for seed in (3, 8, 15):
        original = picture(seed, (256, 224))
        buf = io.BytesIO()
        original.save(buf, format="JPEG", quality=60)
        buf.seek(0)
        copies = [original.resize((128, 112), Image.LANCZOS), Image.open(buf),
                  original.resize((400, 350), Image.BICUBIC).convert("RGBA")]
        for copy in copies:
            rows = index.similar_by_hash(copy, limit=5)
            assert rows[0].id == ids[seed] and rows[0].score > rows[1].score, seed
            assert rows[0].score >= 0.85
    # owners: bob's search never returns alice's picture
    alice_pic = picture(3, (256, 224))
    assert ids[3] not in [r.id for r in index.similar_by_hash(alice_pic, owner="bob")]
    assert index.similar_by_hash(alice_pic, owner="alice")[0].id == ids[3]
    assert index.similar_by_hash(alice_pic, owner="nobody") == []
    # the cached hashes follow additions and removals
    new = folder / "new.png"
    picture(99, (256, 224)).save(new)
    new_id = index.add(new)
    assert index.similar_by_hash(picture(99, (256, 224)))[0].id == new_id
    index.remove(new)
    assert new_id not in [r.id for r in index.similar_by_hash(picture(99, (256, 224)))]
    assert len(index.similar_by_hash(picture(99), max_distance=10)) == 0


def test_similar_by_prompt(index, crafted):
    rows = index.similar_by_prompt(crafted["fox"])
    assert crafted["fox"] not in [r.id for r in rows]
    assert rows[0].id == crafted["sleeping"]  # shares "red" and "fox"; "fox" is rarer than "red"
    assert {r.id for r in rows} >= {crafted["sleeping"], crafted["mountain"]}  # "snowy" too
    by_text = index.similar_by_prompt("an old fisherman mending nets")
    assert by_text[0].id == crafted["fisher"]
    assert [r.id for r in index.similar_by_prompt(crafted["fox"], owner="bob")] == [crafted["sleeping"],
                                                                                   crafted["car"]]
    assert index.similar_by_prompt("zzz qqq") == [] and index.similar_by_prompt("((( 123") == []
    with pytest.raises(KeyError):
        index.similar_by_prompt(999_999)


def test_delete_moves_to_trash_without_overwriting(index, tmp_path):
    outputs = tmp_path / "outputs"
    store = ImageStore(outputs, today=lambda: datetime.date(2026, 1, 2), hooks=[index])
    first = store.save(picture(1), infotext("a doomed kettle"), "txt2img-images", 5, owner="erin")
    row = index.search("kettle").rows[0]
    assert index.get(row.id).owner == "erin"
    moved = index.delete(row.id, outputs / "trash")
    assert moved == (outputs / "trash" / "txt2img-images" / "2026-01-02" / first.name).resolve()
    assert moved.exists() and not first.exists()
    assert index.get(row.id) is None and index.search("kettle").total == 0
    # the same name again: the file already in the trash is kept
    first.parent.mkdir(parents=True, exist_ok=True)
    first.write_bytes(png_bytes(picture(2), infotext("a second doomed kettle")))
    second_id = index.add(first, owner="erin")
    assert index.get(second_id).kind == "txt2img-images"  # read from the store's folder layout
    moved_again = index.delete(second_id, outputs / "trash")
    assert moved_again.name == first.stem + "-1.png" and moved_again.parent == moved.parent
    assert Image.open(moved).info["parameters"].startswith("a doomed kettle")
    assert index.scan([outputs]).added == 0  # the trash is not scanned
    with pytest.raises(KeyError):
        index.delete(row.id, outputs / "trash")


# -- vectors ------------------------------------------------------------------------------------------------------
def test_vectors_nearest_exact_cosine(index, tmp_path):
    rng = np.random.default_rng(0)
    ids = index.put_many([record(f"v{i}", infotext(f"vector {i}"), "alice" if i % 2 else "bob", "t", when(2024, 1, 1))
                          for i in range(60)])
    vectors = rng.normal(size=(60, 32)).astype(np.float32)
    index.put_vectors("clip-test", zip(ids, vectors))
    query = vectors[7] * 3 + rng.normal(scale=0.05, size=32)  # scale does not matter for cosine
    rows = index.nearest(query, "clip-test", limit=5)
    assert rows[0].id == ids[7] and rows[0].score > 0.99
    expected = np.argsort(-(vectors / np.linalg.norm(vectors, axis=1, keepdims=True)) @ (query / np.linalg.norm(query)))
    assert [r.id for r in rows] == [ids[i] for i in expected[:5]]
    assert all(r.owner == "bob" for r in index.nearest(query, "clip-test", owner="bob", limit=10))
    assert ids[7] not in [r.id for r in index.nearest(query, "clip-test", owner="bob")]  # 7 is alice's
    assert index.nearest(query, "other-model") == []
    assert index.missing_vectors("clip-test") == [] and len(index.missing_vectors("other-model", limit=7)) == 7
    with pytest.raises(ValueError):
        index.put_vector(ids[0], "clip-test", np.ones(16))
    with pytest.raises(ValueError):
        index.put_vector(ids[0], "clip-test", np.zeros(32))
    with pytest.raises(KeyError):
        index.put_vector(999_999, "clip-test", np.ones(32))
    # replacing, removing and another process's writes all reach the cached matrix
    index.put_vector(ids[3], "clip-test", query)
    assert index.nearest(query, "clip-test")[0].id == ids[3]
    index.remove(Path("/pictures/t/v3.png"))
    assert ids[3] not in [r.id for r in index.nearest(query, "clip-test", limit=60)]
    other = GalleryIndex(tmp_path / "gallery.sqlite3")
    try:
        assert other.nearest(query, "clip-test")[0].id == ids[7]  # loaded from the database
        other.put_vector(ids[10], "clip-test", query)
    finally:
        other.close()
    assert index.nearest(query, "clip-test")[0].id == ids[10]


def test_ids_are_times_so_newest_first_holds_for_files_sharing_a_time(index):
    same = when(2024, 7, 7)
    ids = index.put_many([record(f"copy{i}", infotext(f"copied picture {i}"), None, "t", same) for i in range(5)])
    older, newer = index.put_many([record("older", infotext("copied picture old"), None, "t", same - 86400),
                                   record("newer", infotext("copied picture new"), None, "t", same + 1)])
    assert len(set(ids)) == 5 and sorted(ids) == ids  # a file copied with the same time still gets its own id
    assert older < min(ids) and newer > max(ids)  # scanned last, yet ordered by its time
    assert [r.id for r in index.search("copied", page_size=10).rows] == [newer, *ids[::-1], older]
    assert [r.id for r in index.search("", page_size=10).rows] == [newer, *ids[::-1], older]
    assert [r.id for r in index.search("after:2024-07-07 before:2024-07-08", sort="oldest").rows] == [*ids, newer]


def test_new_pixels_drop_the_old_embedding_new_text_keeps_it(index, tmp_path):
    path = tmp_path / "pics" / "a.png"
    path.parent.mkdir()
    path.write_bytes(png_bytes(picture(1), infotext("first words")))
    row_id = index.add(path)
    vector = np.arange(1, 9, dtype=np.float32)
    index.put_vector(row_id, "m", vector)
    assert index.nearest(vector, "m")[0].id == row_id  # the matrix is now cached
    path.write_bytes(png_bytes(picture(1), infotext("second words")))  # same picture, new infotext
    assert index.add(path) == row_id
    assert index.nearest(vector, "m")[0].id == row_id and index.missing_vectors("m") == []
    path.write_bytes(png_bytes(picture(2), infotext("second words")))  # another picture under the same name
    assert index.add(path) == row_id
    assert index.nearest(vector, "m") == [] and index.missing_vectors("m") == [row_id]
