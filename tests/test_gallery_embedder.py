"""Content-search embeddings: Easel's shipped demo CLIP finds what a caption names and an img2img child's parent;
a user's CLIP folder is found, preferred and preprocessed like transformers does it; a broken folder is reported
and skipped; vectors round-trip through the gallery index."""
from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from webui.demo.scenes import Scene, SceneGenerator
from webui.gallery import GalleryIndex, ImageRecord
from webui.gallery.embedder import (DEMO_CLIP_PATH, DemoClip, Embedder, Preprocess, TransformersClip,
                                    embed_missing, find_embedder)
from webui.demo.train_clip import EVAL_SEED, img2img_like
from webui.models.errors import ModelError

TEST_SEED = 424_242  # neither the training seed (0) nor the evaluation's
assert TEST_SEED != EVAL_SEED


def is_red_circle(scene: Scene) -> bool:
    return any(s.colour == "red" and s.kind == "circle" for s in scene.shapes)


@pytest.fixture(scope="module")
def demo() -> DemoClip:
    return DemoClip()


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    """Three single red circles among 21 scenes without one (one- and two-shape), shuffled deterministically."""
    gen = SceneGenerator(TEST_SEED)
    reds = [s for s in (gen.scene(i, two=False) for i in range(400)) if is_red_circle(s)][:3]
    others = [s for s in gen.batch(1000, 40) if not is_red_circle(s)][:21]
    mixed = reds + others
    order = np.random.default_rng(TEST_SEED).permutation(len(mixed))
    return [mixed[i] for i in order]


def test_the_demo_model_ships_small_and_loads(demo):
    assert DEMO_CLIP_PATH.stat().st_size < 5_000_000
    assert isinstance(demo, Embedder)
    assert demo.name.startswith("easel-demo-clip:") and demo.dim == 128


def test_embeddings_are_unit_rows_of_the_model_width(demo, scenes):
    images = demo.embed_images([s.image for s in scenes[:5]] + [Image.new("RGBA", (300, 200), (9, 9, 9, 0))])
    texts = demo.embed_text(["a red circle", "", "an unknown wordzzz " * 40])  # empty and over-long prompts too
    for vectors, n in ((images, 6), (texts, 3)):
        assert vectors.shape == (n, demo.dim) and vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert demo.embed_images([]).shape == (0, demo.dim) and demo.embed_text([]).shape == (0, demo.dim)
    # batching does not change a vector
    one = demo.embed_images([scenes[0].image])
    np.testing.assert_allclose(one[0], images[0], atol=1e-5)


def test_a_red_circle_finds_the_red_circles(demo, scenes):
    images = demo.embed_images([s.image for s in scenes])
    query = demo.embed_text(["a red circle"])[0]
    top5 = np.argsort(-(images @ query))[:5]
    assert is_red_circle(scenes[top5[0]])
    assert {i for i, s in enumerate(scenes) if is_red_circle(s)} <= set(top5.tolist())


def test_an_img2img_child_finds_its_parent_in_the_top_3(demo, scenes):
    originals = demo.embed_images([s.image for s in scenes])
    children = demo.embed_images([img2img_like(s.image, seed=i) for i, s in enumerate(scenes)])
    for i, child in enumerate(children):
        assert i in np.argsort(-(originals @ child))[:3].tolist(), scenes[i].caption


def test_two_threads_get_the_same_vectors(demo):
    texts = ["a blue star on the left", "a small white square, black background", "a green triangle"] * 4
    expected = demo.embed_text(texts)
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(demo.embed_text(texts))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3
    for r in results:
        np.testing.assert_allclose(r, expected, atol=1e-6)


# ---------------------------------------------------------------- a user's CLIP folder


def save_tiny_clip(folder: Path, projection_dim: int = 24, tokenizer: bool = False, processor: bool = True) -> None:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=1, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=49407),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=1,
                           image_size=32, patch_size=8),
        projection_dim=projection_dim)
    CLIPModel(config).save_pretrained(folder)
    if tokenizer:
        from webui.models.tokenizers import load_clip_tokenizer

        load_clip_tokenizer().save_pretrained(folder)
    if processor:
        (folder / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 32},
            "do_center_crop": True, "crop_size": {"height": 32, "width": 32}, "do_normalize": True,
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
            "resample": 3}))


def test_a_clip_folder_is_found_and_preferred_over_the_demo_model(tmp_path):
    save_tiny_clip(tmp_path / "CLIP" / "tiny")
    (tmp_path / "CLIP" / ".hidden").mkdir()
    embedder = find_embedder(tmp_path)
    assert isinstance(embedder, TransformersClip) and embedder.name.startswith("clip:tiny:")
    assert embedder.dim == 24
    pictures = [Image.new("RGB", (100, 60), "red"), Image.new("RGB", (40, 90), "blue")]
    images, texts = embedder.embed_images(pictures), embedder.embed_text(["a red circle", "a blue square"])
    assert images.shape == texts.shape == (2, 24)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    # without tokenizer files it uses Easel's tokenizer; with its own it uses that (same table: same vectors)
    save_tiny_clip(tmp_path / "other" / "CLIP" / "tiny", tokenizer=True)
    own = TransformersClip(tmp_path / "other" / "CLIP" / "tiny")
    np.testing.assert_allclose(own.embed_text(["a red circle", "a blue square"]), texts, atol=1e-5)
    # the name changes with the model, so vectors of an old model are never compared with a new one's
    save_tiny_clip(tmp_path / "third" / "CLIP" / "tiny", projection_dim=16)
    assert TransformersClip(tmp_path / "third" / "CLIP" / "tiny").name != embedder.name


def test_preprocessing_matches_transformers_image_processor():
    from transformers import CLIPImageProcessor

    config = {"size": {"shortest_edge": 32}, "crop_size": {"height": 28, "width": 28}}
    processor = CLIPImageProcessor(**config)
    ours = Preprocess.from_config(processor.to_dict(), image_size=224)
    assert (ours.size, ours.crop) == (32, 28)
    rng = np.random.default_rng(1)
    for size in ((100, 60), (45, 120), (36, 100), (100, 36), (32, 32), (28, 30), (20, 20)):
        picture = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
        theirs = processor(images=picture, return_tensors="np")["pixel_values"][0]
        tolerance = 1e-5 if "Pil" in type(processor).__name__ else 0.1  # the torchvision one resizes differently
        np.testing.assert_allclose(ours.array(picture), theirs, atol=tolerance)


@pytest.mark.parametrize("damage", ["config-not-json", "vision-only", "no-weights", "truncated-weights"])
def test_a_broken_clip_folder_is_a_clear_error_and_find_falls_back_to_the_demo(tmp_path, caplog, damage):
    folder = tmp_path / "CLIP" / "broken"
    save_tiny_clip(folder)
    if damage == "config-not-json":
        (folder / "config.json").write_text("{not json")
        expected = "config.json is not readable JSON"
    elif damage == "vision-only":
        (folder / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
        expected = "not a CLIPModel"
    elif damage == "no-weights":
        (folder / "model.safetensors").unlink()
        expected = "no weights"
    else:
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:5000])
        expected = "cannot load the model"
    with pytest.raises(ModelError, match=expected) as raised:
        TransformersClip(folder)
    assert "broken" in str(raised.value)
    with caplog.at_level(logging.WARNING, logger="webui.gallery.embedder"):
        embedder = find_embedder(tmp_path)
    assert isinstance(embedder, DemoClip)
    assert any("broken" in r.getMessage() and expected in r.getMessage() for r in caplog.records)


def test_no_model_anywhere_gives_none(tmp_path):
    assert find_embedder(tmp_path, demo_path=tmp_path / "missing.safetensors") is None


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_a_damaged_demo_file_is_a_model_error(tmp_path, damage):
    path = tmp_path / "demo-clip.safetensors"
    if damage == "truncated":
        path.write_bytes(DEMO_CLIP_PATH.read_bytes()[:100_000])
    else:  # a valid safetensors file that is not a demo CLIP
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(ModelError, match="demo-clip.safetensors"):
        DemoClip(path)
    assert find_embedder(tmp_path, demo_path=path) is None


def test_the_demo_file_loads_like_any_clip_model(tmp_path, demo, scenes):
    """The shipped file holds a plain CLIPModel: saved as a folder, the folder gives the same vectors."""
    demo.model.save_pretrained(tmp_path / "CLIP" / "demo")
    (tmp_path / "CLIP" / "demo" / "preprocessor_config.json").write_text(json.dumps({
        "size": {"shortest_edge": 64}, "crop_size": {"height": 64, "width": 64}, "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3, "resample": 3}))
    folder = find_embedder(tmp_path)
    assert isinstance(folder, TransformersClip)
    pictures = [s.image for s in scenes[:4]]
    np.testing.assert_allclose(folder.embed_images(pictures), demo.embed_images(pictures), atol=1e-5)
    np.testing.assert_allclose(folder.embed_text(["a red circle"]), demo.embed_text(["a red circle"]), atol=1e-5)
    shutil.rmtree(tmp_path / "CLIP")


# ---------------------------------------------------------------- with the gallery index


def test_vectors_round_trip_through_the_gallery_index(tmp_path, demo, scenes):
    index = GalleryIndex(tmp_path / "gallery.sqlite3")
    try:
        records = [ImageRecord(Path(f"/pictures/scene-{i}.png"), "alice" if i % 2 else "bob", "txt2img-images",
                               1_700_000_000.0 + i, 64, 64, {"Prompt": s.caption}) for i, s in enumerate(scenes)]
        ids = index.put_many(records)
        assert sorted(index.missing_vectors(demo.name, limit=100)) == sorted(ids)
        index.put_vectors(demo.name, zip(ids, demo.embed_images([s.image for s in scenes])))
        assert index.missing_vectors(demo.name) == []
        reds = {row_id for row_id, s in zip(ids, scenes) if is_red_circle(s)}
        found = index.nearest(demo.embed_text(["a red circle"])[0], demo.name, limit=5)
        assert found[0].id in reds and reds <= {row.id for row in found}
        assert [row.score for row in found] == sorted((row.score for row in found), reverse=True)
        # image -> image: an img2img child of one picture finds it in the top 3, among that owner's pictures too
        child = demo.embed_images([img2img_like(scenes[5].image, seed=5)])[0]
        assert ids[5] in [row.id for row in index.nearest(child, demo.name, limit=3)]
        mine = index.nearest(child, demo.name, owner=records[5].owner, limit=3)
        assert ids[5] in [row.id for row in mine] and {row.owner for row in mine} == {records[5].owner}
    finally:
        index.close()


def test_embed_missing_fills_the_index_from_the_files_and_skips_unreadable_ones(tmp_path, demo, scenes, caplog):
    index = GalleryIndex(tmp_path / "gallery.sqlite3")
    try:
        ids = []
        for i, scene in enumerate(scenes[:10]):
            path = tmp_path / "outputs" / f"{i:05d}.png"
            path.parent.mkdir(exist_ok=True)
            scene.image.save(path)
            ids.append(index.add(path, owner="alice"))
        (tmp_path / "outputs" / "00003.png").write_bytes(b"not a picture any more")
        skip: set[int] = set()
        with caplog.at_level(logging.WARNING, logger="webui.gallery.embedder"):
            # newest first: 9-6, then 5-2 where 3 cannot be read, then 1-0
            assert [embed_missing(index, demo, limit=4, skip=skip) for _ in range(3)] == [4, 3, 2]
            assert embed_missing(index, demo, limit=4, skip=skip) == 0
        assert skip == {ids[3]} and any("00003.png" in r.getMessage() for r in caplog.records)
        assert index.missing_vectors(demo.name) == [ids[3]]
        # the stored vectors are the pictures' own: each picture finds itself first
        for i in (0, 5, 9):
            assert index.nearest(demo.embed_images([scenes[i].image])[0], demo.name, limit=1)[0].id == ids[i]
    finally:
        index.close()
