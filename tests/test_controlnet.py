"""ControlNet: models in every layout (matched to the checkpoint, refused for another family), the units'
semantics (weight, guidance window, control modes, several units, hires option), img2img's input as the
control picture, the infotext both ways, and the API with the payload `webuiapi` sends."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
import webuiapi
from PIL import Image, ImageDraw
from safetensors.torch import save_file

from apiclient import api_client
from tiny_models import build_tiny_sdxl, tiny_controlnet, write_controlnet, write_safetensors
from webui.admission import Admission, Caller
from webui.errors import FieldError
from webui.features.controlnet import ControlNetArgs, ControlNetUnit
from webui.generation.outpaint import OutpaintRequest
from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest
from webui.images.infotext import parse_infotext
from webui.models.errors import ModelError
from webui.models.ldm_export import controlnet_to_ldm

BASE = dict(prompt="a red circle", steps=4, width=64, height=64, seed=3, sampler_name="Euler", cfg_scale=5.0,
            checkpoint="tiny-a.safetensors")
@pytest.fixture(scope="module")
def nets(tiny_a):
    return tiny_controlnet(tiny_a.unet, 1), tiny_controlnet(tiny_a.unet, 2)


@pytest.fixture()
def cn_easel(easel, nets):
    folder = easel.settings.models_dir / "ControlNet"
    write_controlnet(nets[0], folder / "control_tiny_canny.safetensors")
    nets[1].save_pretrained(folder / "tiny-diffusers")
    return easel


def square(size=64, box=(16, 16, 48, 48), fill="white", background="black") -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    ImageDraw.Draw(image).rectangle(box, fill=fill)
    return image


def unit(**changes) -> dict:
    return {"enabled": True, "module": "none", "model": "control_tiny_canny", "image": square(), **changes}


def run(easel, units=None, request=Txt2ImgRequest, **changes):
    scripts = {"controlnet": {"args": units}} if units is not None else {}
    req = request(**{**BASE, **changes}, alwayson_scripts=scripts)
    req = easel.features.validate(req)
    return easel.engine.generate(easel.load_model(req.checkpoint), req, None)


def pixels(result, i=0) -> np.ndarray:
    return np.asarray(result.images[i], dtype=np.int16)


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


# -- models ---------------------------------------------------------------------------------------------------
def test_every_layout_loads_the_files_weights(cn_easel, nets, tiny_a):
    lib = cn_easel.controlnets
    folder = lib.folder
    torch.save(controlnet_to_ldm(nets[0].state_dict(), 1), folder / "control_pth.pth")
    save_file({k: v.contiguous() for k, v in nets[1].state_dict().items()}, folder / "xl-style-single.safetensors")
    (folder / "annotators").mkdir()
    torch.save({"w": torch.zeros(1)}, folder / "annotators" / "body_pose_model.pth")  # not a ControlNet
    titles = lib.titles()
    assert [t.split(" [")[0] for t in titles] == ["control_pth", "control_tiny_canny", "tiny-diffusers",
                                                  "xl-style-single"]
    digest = cn_easel.manager.catalog.hashes.sha256(folder / "control_tiny_canny.safetensors")
    assert f"control_tiny_canny [{digest[:8]}]" in titles
    for name, source in (("control_pth", nets[0]), ("control_tiny_canny", nets[0]), ("tiny-diffusers", nets[1]),
                         ("xl-style-single", nets[1])):
        loaded = lib.load(name, tiny_a.unet, "tiny-a", torch.device("cpu"), torch.float32)
        expected = source.state_dict()
        assert set(loaded.state_dict()) == set(expected)
        assert all(torch.equal(loaded.state_dict()[k], expected[k]) for k in expected), name


def test_a_controlnet_lives_in_the_typed_cache_once(cn_easel, tiny_a):
    first = run(cn_easel, [unit()])
    again = run(cn_easel, [unit()])
    assert np.array_equal(pixels(first), pixels(again))
    entries = cn_easel.manager.cache.entries("controlnet")
    assert [e.title for e in entries] == ["control_tiny_canny"]


def test_another_familys_controlnet_is_refused_naming_both(cn_easel, tmp_path):
    xl = build_tiny_sdxl(seed=4)
    write_controlnet(tiny_controlnet(xl.unet, 3), cn_easel.controlnets.folder / "xl-control.safetensors")
    with pytest.raises(ModelError) as e:
        run(cn_easel, [unit(model="xl-control")])
    assert "xl-control" in str(e.value) and "tiny-a" in str(e.value) and "SDXL" in str(e.value)
    assert run(cn_easel, [unit()]).images  # the checkpoint stays usable


def test_an_sdxl_controlnet_runs_with_an_sdxl_checkpoint(cn_easel, tmp_path):
    xl = build_tiny_sdxl(seed=4)
    folder = tmp_path / "xl-models"
    write_safetensors(xl, folder / "xl.safetensors", metadata={"modelspec.resolution": "64x64"})
    cn_easel.manager.catalog.roots.append(folder)
    cn_easel.manager.refresh()
    tiny_controlnet(xl.unet, 3).save_pretrained(cn_easel.controlnets.folder / "xl-control")
    plain = run(cn_easel, checkpoint="xl.safetensors")
    controlled = run(cn_easel, [unit(model="xl-control")], checkpoint="xl.safetensors")
    assert np.abs(pixels(plain) - pixels(controlled)).mean() > 1
    with pytest.raises(ModelError, match="SD 1.x|32-wide"):
        run(cn_easel, [unit()], checkpoint="xl.safetensors")


def test_files_that_are_not_controlnets_get_a_clear_error(cn_easel):
    folder = cn_easel.controlnets.folder
    save_file({"something.weight": torch.zeros(2, 2)}, folder / "junk.safetensors")
    (folder / "broken.safetensors").write_bytes(b"not a safetensors file")
    for name in ("junk", "broken"):
        with pytest.raises(ModelError, match=name):
            run(cn_easel, [unit(model=name)])
    with pytest.raises(FieldError, match="no ControlNet 'nope'"):
        run(cn_easel, [unit(model="nope")])


# -- units ----------------------------------------------------------------------------------------------------
def test_weight_zero_is_exactly_no_controlnet_and_weight_one_changes_it(cn_easel):
    plain = pixels(run(cn_easel))
    assert np.array_equal(pixels(run(cn_easel, [unit(weight=0.0)])), plain)
    assert np.array_equal(pixels(run(cn_easel, [unit(enabled=False)])), plain)
    controlled = pixels(run(cn_easel, [unit(weight=1.0)]))
    assert np.abs(controlled - plain).mean() > 1


def test_the_control_picture_steers_the_image(cn_easel):
    """Same seed and prompt, two different control pictures: two different images."""
    a = pixels(run(cn_easel, [unit(image=square(box=(4, 4, 30, 30)))]))
    b = pixels(run(cn_easel, [unit(image=square(box=(34, 34, 60, 60)))]))
    assert np.abs(a - b).mean() > 0.3


def test_a_guidance_window_that_holds_no_step_is_no_controlnet(cn_easel):
    plain = pixels(run(cn_easel))
    assert np.array_equal(pixels(run(cn_easel, [unit(guidance_start=1.0, guidance_end=1.0)])), plain)
    late = pixels(run(cn_easel, [unit(guidance_start=0.5)]))
    full = pixels(run(cn_easel, [unit()]))
    assert not np.array_equal(late, plain) and not np.array_equal(late, full)


def test_two_units_add_up(cn_easel):
    one = pixels(run(cn_easel, [unit()]))
    second = unit(model="tiny-diffusers", image=square(box=(0, 20, 64, 44)))
    two = pixels(run(cn_easel, [unit(), second]))
    assert np.abs(two - one).mean() > 1
    assert np.array_equal(pixels(run(cn_easel, [unit(), {**second, "weight": 0}])), one)
    assert np.array_equal(pixels(run(cn_easel, [unit(), {**second, "enabled": False}])), one)


def test_control_modes_differ_as_the_extension_defines_them(cn_easel):
    results = {mode: pixels(run(cn_easel, [unit(control_mode=mode)]))
               for mode in ("Balanced", "My prompt is more important", "ControlNet is more important")}
    values = list(results.values())
    assert all(not np.array_equal(values[i], values[j]) for i in range(3) for j in range(i + 1, 3))
    assert np.array_equal(pixels(run(cn_easel, [unit(control_mode=2)])), results["ControlNet is more important"])
    # without guidance both halves are one: "ControlNet is more important" is "Balanced"
    no_cfg = dict(cfg_scale=1.0)
    assert np.array_equal(pixels(run(cn_easel, [unit(control_mode=2)], **no_cfg)),
                          pixels(run(cn_easel, [unit()], **no_cfg)))


def test_hires_option_picks_the_passes(cn_easel):
    hires = {"hires fix": {"enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.5, "hr_upscaler": "Latent"}}

    def go(units=None):
        scripts = {**hires, **({"controlnet": {"args": units}} if units else {})}
        req = cn_easel.features.validate(Txt2ImgRequest(**BASE, alwayson_scripts=scripts))
        return pixels(cn_easel.engine.generate(cn_easel.load_model(req.checkpoint), req, None))
    plain = go()
    both, low, high = (go([unit(hr_option=o)]) for o in ("Both", "Low res only", "High res only"))
    assert both.shape == (96, 96, 3)
    assert len({a.tobytes() for a in (plain, both, low, high)}) == 4


def test_img2img_uses_its_input_when_a_unit_has_no_picture(cn_easel):
    init = square(fill="red", background="blue")
    common = dict(init_image=init, denoising_strength=0.75)
    from_input = pixels(run(cn_easel, [unit(image=None)], request=Img2ImgRequest, **common))
    given = pixels(run(cn_easel, [unit(image=square(fill="red", background="blue"))], request=Img2ImgRequest,
                       **common))
    assert np.array_equal(from_input, given)
    with pytest.raises(FieldError, match="needs an image") as e:
        run(cn_easel, [unit(), unit(image=None)])
    assert e.value.field == "alwayson_scripts.controlnet.args.1.image"  # refused at admission


def test_the_outpaint_canvas_takes_units(cn_easel):
    """A partly painted box: a unit without a picture uses the box as img2img's input; its job keeps the old
    pixels and differs from the box without ControlNet."""
    box = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    box.paste(Image.new("RGBA", (40, 64), (200, 30, 30, 255)), (0, 0))
    admission = Admission(cn_easel)
    caller = Caller(owner="tester", manager=True)

    def outpaint(units):
        scripts = {"controlnet": {"args": units}} if units else {}
        req = OutpaintRequest(prompt="a red circle", steps=2, seed=4, width=64, height=64, overlap=8, box=box,
                              checkpoint="tiny-a", alwayson_scripts=scripts)
        job = admission.submit("outpaint", req, caller).job
        assert job.wait(120) and job.error is None, job.error
        return np.asarray(job.result.result.images[0], dtype=np.int16)
    plain = outpaint(None)
    controlled = outpaint([unit(image=None, module="inpaint_only")])
    assert np.abs(plain - controlled).mean() > 0.2
    assert np.array_equal(controlled[:, :20], plain[:, :20])  # beyond the overlap band: the painted pixels


def test_inpaint_only_with_the_img2img_mask(cn_easel):
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 48, 48), fill=255)
    common = dict(init_image=square(fill="red", background="blue"), mask=mask, denoising_strength=0.75)
    plain = pixels(run(cn_easel, request=Img2ImgRequest, **common))
    inpainted = pixels(run(cn_easel, [unit(image=None, module="inpaint_only")], request=Img2ImgRequest, **common))
    assert np.abs(plain - inpainted).mean() > 0.2
    only_masked = pixels(run(cn_easel, [unit(image=None, module="inpaint_only")], request=Img2ImgRequest,
                             inpaint_full_res=True, **common))
    assert only_masked.shape == (64, 64, 3)


def test_bad_units_name_the_unit_and_field(cn_easel):
    cases = [
        (unit(module="nope"), "alwayson_scripts.controlnet.args.1.module"),
        (unit(module="depth_midas"), "alwayson_scripts.controlnet.args.1.module"),
        (unit(model="None"), "alwayson_scripts.controlnet.args.1.model"),
        (unit(model="missing"), "alwayson_scripts.controlnet.args.1.model"),
        (unit(image="bm90IGFuIGltYWdl"), "alwayson_scripts.controlnet.args.1.image"),
        (unit(weight=3), "alwayson_scripts.controlnet.args.1.weight"),
        (unit(resize_mode="Stretch"), "alwayson_scripts.controlnet.args.1.resize_mode"),
        (unit(guidance_start=0.8, guidance_end=0.2), "alwayson_scripts.controlnet.args.1.guidance_end"),
        ("not a unit", "alwayson_scripts.controlnet.args.1"),
    ]
    for bad, field in cases:
        with pytest.raises(FieldError) as e:
            cn_easel.features.validate(Txt2ImgRequest(**BASE, alwayson_scripts={"controlnet": {"args": [unit(), bad]}}))
        assert e.value.field == field, (bad, e.value.field, e.value)


def test_a_finished_request_keeps_no_control_pictures(cn_easel):
    req = cn_easel.features.validate(Txt2ImgRequest(**BASE, alwayson_scripts={"controlnet": {"args": [unit()]}}))
    kept = req.without_images().alwayson_scripts["controlnet"]
    assert isinstance(kept, ControlNetArgs) and kept.units[0].image is None
    assert req.alwayson_scripts["controlnet"].units[0].image is not None


# -- infotext -------------------------------------------------------------------------------------------------
def test_infotext_lines_as_the_extension_writes_them_and_back(cn_easel):
    result = run(cn_easel, [unit(module="canny", threshold_a=50, weight=0.75), unit(model="tiny-diffusers")])
    parsed = parse_infotext(result.infotexts[0])
    title = cn_easel.controlnets.titles()[0]
    assert parsed["ControlNet 0"].startswith(f"Module: canny, Model: {title}, Weight: 0.75, Resize Mode: Crop and "
                                             "Resize, Processor Res: 512, Threshold A: 50, Threshold B: 200, ")
    assert '"Module: canny' in result.infotexts[0]  # quoted: its commas are not the infotext's
    assert parsed["ControlNet 1"].startswith("Module: none, Model: tiny-diffusers [")
    back = cn_easel.features.settings_from_infotext(parsed)["controlnet"]["args"]
    assert [u["module"] for u in back] == ["canny", "none"]
    assert back[0]["weight"] == 0.75 and back[0]["threshold_a"] == 50 and back[0]["model"] == title
    assert back[0]["control_mode"] == "Balanced" and back[0]["guidance_end"] == 1.0
    ControlNetUnit.model_validate(back[0])  # what paste fills in is a valid unit


# -- the API --------------------------------------------------------------------------------------------------
@pytest.fixture()
def client(cn_easel):
    with api_client(cn_easel) as c:
        yield c


def test_the_extensions_routes(client, cn_easel):
    assert client.get("/controlnet/version").json() == {"version": 2}
    scripts = client.get("/sdapi/v1/scripts").json()
    assert "controlnet" in scripts["txt2img"] and "controlnet" in scripts["img2img"]
    assert client.get("/controlnet/model_list").json()["model_list"] == cn_easel.controlnets.titles()
    modules = client.get("/controlnet/module_list").json()
    wanted = {"none", "canny", "invert", "inpaint_only", "tile_resample", "t2ia_color_grid"}
    assert wanted <= set(modules["module_list"])
    canny = modules["module_detail"]["canny"]
    assert [s["name"] for s in canny["sliders"]] == ["Preprocessor Resolution", "Low Threshold", "High Threshold"]
    assert modules["module_detail"]["openpose"]["available"] is False and modules["module_detail"]["openpose"]["needs"]


def test_detect_returns_the_map(client):
    picture = [b64(square())]
    r = client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": picture,
                                                "controlnet_processor_res": 64, "controlnet_threshold_a": 100,
                                                "controlnet_threshold_b": 200})
    assert r.status_code == 200, r.text
    edges = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("L"))
    assert edges.shape == (64, 64) and edges[16:49, 15:18].max() == 255 and edges[30, 30] == 0 and edges[2, 2] == 0
    bad = client.post("/controlnet/detect", json={"controlnet_module": "nope", "controlnet_input_images": picture})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "controlnet_module"
    bad = client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": ["xx"]})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "controlnet_input_images.0"


def test_txt2img_with_webuiapis_payload(client, cn_easel):
    body = {**{k: v for k, v in BASE.items() if k != "checkpoint"},
            "override_settings": {"sd_model_checkpoint": "tiny-a.safetensors"}}
    plain = client.post("/sdapi/v1/txt2img", json=body)
    assert plain.status_code == 200, plain.text
    title = cn_easel.controlnets.titles()[1]  # control_tiny_canny [hash8], as model_list gives it
    unit_body = webuiapi.ControlNetUnit(image=square(), module="canny", model=title, threshold_a=64,
                                        threshold_b=128, resize_mode="Resize and Fill", control_mode=0).to_dict()
    r = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"controlnet": {"args": [unit_body]}}})
    assert r.status_code == 200, r.text
    info = r.json()["info"]
    assert f"Module: canny, Model: {title}, Weight: 1, Resize Mode: Resize and Fill" in info
    a = np.asarray(Image.open(io.BytesIO(base64.b64decode(plain.json()["images"][0]))), dtype=np.int16)
    b = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))), dtype=np.int16)
    assert np.abs(a - b).mean() > 1
    legacy = {**unit_body, "input_image": unit_body["image"], "guidance": 1.0, "lowvram": False}  # older clients
    del legacy["image"]
    again = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"controlnet": {"args": [legacy]}}})
    assert again.status_code == 200 and again.json()["images"] == r.json()["images"]
    bad = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"controlnet": {"args": [
        unit_body, {**unit_body, "model": "missing"}]}}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "alwayson_scripts.controlnet.args.1.model"
    assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200  # still serving


# -- annotators ---------------------------------------------------------------------------------------------
def tiny_depth_models(folder) -> None:
    """Depth Anything and DPT folders as transformers saves them, tiny and random (the code path, not depth)."""
    from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTConfig,
                              DPTForDepthEstimation)
    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=56, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    DepthAnythingForDepthEstimation(DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
        head_hidden_size=8)).save_pretrained(folder / "depth-anything-small-hf")
    DPTForDepthEstimation(DPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=64,
        patch_size=16, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, backbone_out_indices=[0, 1, 2, 3],
        head_in_index=-1)).save_pretrained(folder / "dpt-hybrid-midas")


def test_depth_modules_run_when_their_annotators_are_there(client, cn_easel):
    picture = {"controlnet_input_images": [b64(square(size=96))], "controlnet_processor_res": 64}
    for module in ("depth_anything", "depth_midas"):
        assert client.get("/controlnet/module_list").json()["module_detail"][module]["available"] is False
        r = client.post("/controlnet/detect", json={"controlnet_module": module, **picture})
        assert r.status_code == 422 and "annotators/" in r.json()["message"], r.text
    annotators = cn_easel.controlnets.folder / "annotators"
    tiny_depth_models(annotators)
    detail = client.get("/controlnet/module_list").json()["module_detail"]
    assert detail["depth_anything"]["available"] and detail["depth_midas"]["available"]
    assert cn_easel.controlnets.titles()[0].startswith("control_tiny_canny")  # annotators are not ControlNets
    for module in ("depth_anything", "depth_midas"):
        r = client.post("/controlnet/detect", json={"controlnet_module": module, **picture})
        assert r.status_code == 200, r.text
        depth = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("L"))
        assert depth.shape == (64, 64) and depth.max() > 200 and depth.min() < 50  # normalised to the full range
    plain = pixels(run(cn_easel, [unit(module="none")]))
    assert not np.array_equal(pixels(run(cn_easel, [unit(module="depth_anything")])), plain)
    assert len(cn_easel.manager.cache.entries("annotator")) == 2  # loaded once each, in the typed cache
    (annotators / "dpt-hybrid-midas" / "config.json").write_text("{not json")
    bad = client.post("/controlnet/detect", json={"controlnet_module": "depth_midas", **picture})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "controlnet_module", bad.text
    assert client.post("/controlnet/detect", json={"controlnet_module": "canny", **picture}).status_code == 200
