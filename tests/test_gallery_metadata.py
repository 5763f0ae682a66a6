"""Reading generation metadata from image files (EXIF UserComment encodings, ComfyUI graphs) and the search
box parser, without an index."""
from __future__ import annotations

import io
import json

from PIL import Image, PngImagePlugin

from webui.images.metadata import comfyui_parameters, decode_user_comment, read_image_metadata
from webui.gallery.query import MAX_TERMS, Term, compile_query, fts_phrase, parse_query

TEXT = "a café at night, (neon:1.1)\nNegative prompt: blurry\nSteps: 12, Sampler: Euler, Seed: 9, Size: 64x64"


def test_user_comment_encodings():
    assert decode_user_comment(b"UNICODE\x00" + TEXT.encode("utf-16-be")) == TEXT  # piexif / A1111
    assert decode_user_comment(b"UNICODE\x00" + TEXT.encode("utf-16-le")) == TEXT
    assert decode_user_comment(b"UNICODE\x00" + TEXT.encode("utf-16")) == TEXT  # with a byte-order mark
    assert decode_user_comment(b"UNICODE\x00" + "日本語のプロンプト".encode("utf-16-be")) == "日本語のプロンプト"
    assert decode_user_comment(b"ASCII\x00\x00\x00hello\x00") == "hello"
    assert decode_user_comment(b"JIS\x00\x00\x00\x00\x00" + "猫".encode("shift_jis")) == "猫"
    assert decode_user_comment(b"\x00" * 8 + TEXT.encode()) == TEXT
    assert decode_user_comment(TEXT.encode()) == TEXT  # no prefix at all
    assert decode_user_comment(b"UNICODE\x00") is None
    assert decode_user_comment(b"") is None


def test_read_image_metadata_from_open_images_and_odd_files():
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x8769] = {0x9286: b"UNICODE\x00" + TEXT.encode("utf-16-be")}
    Image.new("RGB", (16, 16), "blue").save(buf, format="JPEG", exif=exif)
    meta = read_image_metadata(Image.open(io.BytesIO(buf.getvalue())))
    assert meta.source == "exif" and meta.parameters["Prompt"] == "a café at night, (neon:1.1)"
    assert meta.parameters["Seed"] == "9" and meta.parameters["Negative prompt"] == "blurry"
    # an EXIF block without a comment, a PNG without text, a PNG whose `prompt` chunk is not a graph
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG", exif=Image.Exif())
    assert read_image_metadata(Image.open(io.BytesIO(buf.getvalue()))).infotext is None
    assert read_image_metadata(Image.new("RGB", (4, 4))).source == "none"
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", "a plain text prompt, not JSON")
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG", pnginfo=info)
    assert read_image_metadata(Image.open(io.BytesIO(buf.getvalue()))).infotext is None


def test_comfyui_graph_mapping_follows_links():
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "base.ckpt"}},
        "2": {"class_type": "CLIPTextEncodeSDXL", "inputs": {"text_g": "a red kite", "text_l": "a red kite"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": ["9", 0]}},
        "9": {"class_type": "String", "inputs": {"string": "dull"}},
        "4": {"class_type": "ConditioningCombine",
              "inputs": {"conditioning_1": ["2", 0], "conditioning_2": ["5", 0]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "over the sea"}},
        "6": {"class_type": "ControlNetApplyAdvanced", "inputs": {"positive": ["4", 0], "negative": ["3", 0],
                                                                  "image": ["7", 0]}},
        "7": {"class_type": "LoadImage", "inputs": {"image": "pose.png"}},
        "8": {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": 5, "steps": 8, "cfg": 2,
                                                           "sampler_name": "dpmpp_2m", "scheduler": "normal",
                                                           "model": ["1", 0], "positive": ["6", 0],
                                                           "negative": ["6", 1]}},
    }
    params = comfyui_parameters(json.dumps(graph))
    assert params["Prompt"] == "a red kite, over the sea" and params["Negative prompt"] == "dull"
    assert (params["Seed"], params["Steps"], params["Sampler"], params["Model"]) == (5, 8, "DPM++ 2M", "base")
    assert "Schedule type" not in params  # ComfyUI's "normal" is A1111's automatic choice
    cyclic = {"1": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "positive": ["2", 0], "seed": ["2", 0]}},
              "2": {"class_type": "Loop", "inputs": {"model": ["2", 0], "conditioning": ["2", 0], "seed": ["2", 0]}}}
    assert comfyui_parameters(json.dumps(cyclic))["Prompt"] == ""
    assert comfyui_parameters(json.dumps({"1": {"class_type": "LoadImage", "inputs": {}}})) is None
    assert comfyui_parameters("[1, 2]") is None and comfyui_parameters("{not json") is None


def test_parse_query_terms():
    terms = parse_query('red -fox "blue sky" model:"my model" -seed:5 NEAR( neg:"bad hands')
    assert terms.terms == (
        Term("red"), Term("fox", negated=True), Term("blue sky", quoted=True), Term("my model", "model", quoted=True),
        Term("5", "seed", negated=True), Term("NEAR("), Term("bad hands", "neg", quoted=True))
    assert parse_query("  - -- : ").terms == (Term("-"), Term("-", negated=True), Term(":"))
    assert fts_phrase(Term('say "hi"')) == '"say ""hi"""'
    assert fts_phrase(Term("astro*")) == '"astro" *' and fts_phrase(Term("astro*", quoted=True)) == '"astro*"'
    assert fts_phrase(Term("((*))")) is None


def test_compile_query_keeps_user_text_out_of_the_sql():
    plan = compile_query(parse_query("x' OR 1=1 -- model:'; DROP TABLE images"), owner="ann")
    assert "DROP" not in " ".join(plan.where) and "1=1" not in " ".join(plan.where)
    assert "ann" in plan.params and '"DROP"' in plan.match
    many = compile_query(parse_query(" ".join(f"w{i}" for i in range(MAX_TERMS + 10))), owner=None)
    assert many.match.count('"w') == MAX_TERMS and many.notes
