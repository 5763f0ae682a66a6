"""Checkpoint merger: A1111's arithmetic, refusals before anything is written, a streamed file that loads."""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tiny_models import build_tiny_sd, build_tiny_sdxl, write_ckpt, write_safetensors
from webui.models.catalog import CheckpointInfo
from webui.models.errors import ModelError
from webui.models.loader import load_checkpoint
from webui.models.merge import MergeRecipe, merge_checkpoints

CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
VAE = "first_stage_model."


@pytest.fixture(scope="module")
def models(model_root) -> Path:
    return model_root / "models" / "Stable-diffusion"


@pytest.fixture(scope="module")
def tensors(models) -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_file(models / f"tiny-{name}.safetensors") for name in ("a", "b")}


@pytest.fixture(scope="module")
def tiny_c(tmp_path_factory) -> Path:
    """A third SD1 model, for add difference."""
    return write_safetensors(build_tiny_sd(seed=2), tmp_path_factory.mktemp("c") / "tiny-c.safetensors")


def merge(models: Path, out: Path, method: str = "weighted sum", m: float = 0.5, a: str | Path = "tiny-a.safetensors",
          b: str | Path = "tiny-b.safetensors", c: Path | None = None, **extra) -> dict[str, torch.Tensor]:
    """Merge files of `models` (or absolute paths) into `out` and read the result back."""
    merge_checkpoints(MergeRecipe(models / a, models / b, c, method, m, **extra), out)
    return load_file(out)


def metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_weighted_sum_is_exact_at_the_ends_and_averages_in_between(models, tensors, tmp_path):
    a, b = tensors["a"], tensors["b"]
    at0 = merge(models, tmp_path / "m0.safetensors", "Weighted sum", 0.0)
    at1 = merge(models, tmp_path / "m1.safetensors", "WEIGHTED SUM", 1.0)
    half = merge(models, tmp_path / "half.safetensors", "weighted sum", 0.5)
    assert at0.keys() == at1.keys() == half.keys() == a.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a), "the two tiny models must differ for this test to mean anything"
    for k in a:
        assert torch.equal(at0[k], a[k]) and at0[k].dtype == a[k].dtype, k
        assert torch.equal(at1[k], b[k]), k
        assert torch.allclose(half[k], (a[k] + b[k]) / 2, atol=1e-6, rtol=0), k
    # the ends are the sources themselves, not A * (1 - M) + B * M: that is NaN where the other holds an infinity
    for name, sd in (("a", a), ("b", b)):
        save_file({**sd, CONV_IN: torch.full_like(sd[CONV_IN], float("inf"))}, tmp_path / f"{name}-inf.safetensors")
    at0 = merge(models, tmp_path / "inf-0.safetensors", m=0.0, b=tmp_path / "b-inf.safetensors")
    at1 = merge(models, tmp_path / "inf-1.safetensors", m=1.0, a=tmp_path / "a-inf.safetensors")
    assert torch.equal(at0[CONV_IN], a[CONV_IN]) and torch.equal(at1[CONV_IN], b[CONV_IN])


def test_add_difference(models, tensors, tiny_c, tmp_path):
    c = load_file(tiny_c)
    out = merge(models, tmp_path / "diff.safetensors", "Add difference", 0.3, c=tiny_c)
    a, b = tensors["a"], tensors["b"]
    for k in (CONV_IN, "first_stage_model.decoder.conv_out.weight",
              "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"):
        assert torch.allclose(out[k], a[k] + (b[k] - c[k]) * 0.3, atol=1e-6, rtol=0), k
        assert not torch.allclose(out[k], a[k], atol=1e-4), k
    with pytest.raises(ModelError, match=r"tertiary model \(C\)"):
        merge_checkpoints(MergeRecipe(models / "tiny-a.safetensors", models / "tiny-b.safetensors", None,
                                      "add difference", 0.3), tmp_path / "no-c.safetensors")
    assert not (tmp_path / "no-c.safetensors").exists()


def test_fp16_and_a1111_metadata(models, tensors, tmp_path):
    out_path = tmp_path / "half-precision.safetensors"
    progress = []
    merge_checkpoints(MergeRecipe(models / "tiny-a.safetensors", models / "tiny-b.safetensors", None,
                                  "Weighted sum", 0.25, fp16=True), out_path,
                      on_progress=lambda done, total: progress.append((done, total)))
    out = load_file(out_path)
    a, b = tensors["a"], tensors["b"]
    assert {v.dtype for v in out.values()} == {torch.float16}
    assert torch.allclose(out[CONV_IN].float(), a[CONV_IN] * 0.75 + b[CONV_IN] * 0.25, atol=1e-3)
    assert progress == [(i, len(a)) for i in range(1, len(a) + 1)]
    header_size = int.from_bytes(out_path.read_bytes()[:8], "little")
    assert header_size % 8 == 0  # the tensor data starts aligned

    meta = metadata(out_path)
    assert meta["format"] == "pt"
    assert meta["modelspec.resolution"] == "64x64"  # the inputs' metadata is carried over
    recipe = json.loads(meta["sd_merge_recipe"])
    sha = {n: hashlib.sha256((models / n).read_bytes()).hexdigest()
           for n in ("tiny-a.safetensors", "tiny-b.safetensors")}
    assert recipe["type"] == "webui" and recipe["interp_method"] == "Weighted sum"
    assert recipe["multiplier"] == 0.25 and recipe["save_as_half"] is True
    assert recipe["primary_model_hash"] == sha["tiny-a.safetensors"]
    assert recipe["secondary_model_hash"] == sha["tiny-b.safetensors"] and recipe["tertiary_model_hash"] is None
    assert recipe["custom_name"] == "half-precision" and recipe["is_inpainting"] is False
    merged_models = json.loads(meta["sd_merge_models"])
    assert {v["name"] for v in merged_models.values()} == {"tiny-a.safetensors", "tiny-b.safetensors"}
    assert merged_models[sha["tiny-b.safetensors"]]["name"] == "tiny-b.safetensors"

    # merging the merge records its recipe among the ancestors
    again = tmp_path / "again.safetensors"
    merge_checkpoints(MergeRecipe(out_path, models / "tiny-a.safetensors", None, "weighted sum", 0.5), again)
    ancestors = json.loads(metadata(again)["sd_merge_models"])
    own = hashlib.sha256(out_path.read_bytes()).hexdigest()
    assert ancestors[own]["sd_merge_recipe"]["multiplier"] == 0.25
    assert sha["tiny-b.safetensors"] in ancestors


def test_ckpt_input_merges_like_its_safetensors_twin(models, tiny_a, tmp_path):
    from_st = merge(models, tmp_path / "st.safetensors", a="tiny-a.safetensors", m=0.4)
    # old community files name CLIP's tensors without `text_model.`: they still meet B's
    old_keys = write_ckpt(tiny_a, tmp_path / "old-keys.ckpt", old_clip_keys=True)
    for a in (models / "sub" / "tiny-a-ckpt.ckpt", old_keys):
        from_ckpt = merge(models, tmp_path / f"{a.stem}.safetensors", a=a, m=0.4)
        assert from_ckpt.keys() == from_st.keys()
        for k in from_st:
            assert torch.equal(from_ckpt[k], from_st[k]), k


def _leftovers(folder: Path, before: set[Path]) -> set[Path]:
    return set(folder.iterdir()) - before


def test_shape_mismatch_is_refused_before_writing(models, tensors, tmp_path):
    odd = dict(tensors["b"])
    key = "model.diffusion_model.out.2.weight"
    odd[key] = torch.zeros(odd[key].shape[0], odd[key].shape[1] // 2, *odd[key].shape[2:])
    save_file(odd, tmp_path / "odd.safetensors")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ModelError) as err:
        merge_checkpoints(MergeRecipe(models / "tiny-a.safetensors", tmp_path / "odd.safetensors", None,
                                      "weighted sum", 0.5), out_dir / "m.safetensors")
    message = str(err.value)
    assert key in message and str(tuple(tensors["a"][key].shape)) in message and str(tuple(odd[key].shape)) in message
    assert "odd.safetensors" in message
    assert list(out_dir.iterdir()) == []


def test_other_family_is_refused_before_writing(models, tmp_path):
    xl = write_safetensors(build_tiny_sdxl(seed=3), tmp_path / "tiny-xl.safetensors")
    before = set(tmp_path.iterdir())
    with pytest.raises(ModelError) as err:
        merge_checkpoints(MergeRecipe(models / "tiny-a.safetensors", xl, None, "weighted sum", 0.5),
                          tmp_path / "m.safetensors")
    message = str(err.value)
    assert "tiny-a.safetensors" in message and "SD 1.x" in message
    assert "tiny-xl.safetensors" in message and "SDXL" in message
    assert _leftovers(tmp_path, before) == set()


def test_a_failure_while_writing_leaves_no_file(models, tmp_path):
    def stop(done: int, total: int) -> None:
        if done == 5:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        merge_checkpoints(MergeRecipe(models / "tiny-a.safetensors", models / "tiny-b.safetensors", None,
                                      "weighted sum", 0.5), tmp_path / "m.safetensors", on_progress=stop)
    assert list(tmp_path.iterdir()) == []


def test_inpainting_a_merges_its_latent_channels_only(models, tensors, tmp_path):
    inpaint = write_safetensors(build_tiny_sd(seed=4, in_channels=9), tmp_path / "inpaint.safetensors")
    a = load_file(inpaint)
    b = tensors["b"]
    out_path = tmp_path / "merged-inpaint.safetensors"
    merge_checkpoints(MergeRecipe(inpaint, models / "tiny-b.safetensors", None, "weighted sum", 0.5), out_path)
    out = load_file(out_path)
    assert out[CONV_IN].shape == a[CONV_IN].shape
    assert torch.allclose(out[CONV_IN][:, :4], (a[CONV_IN][:, :4] + b[CONV_IN]) / 2, atol=1e-6)
    assert torch.equal(out[CONV_IN][:, 4:], a[CONV_IN][:, 4:])
    assert json.loads(metadata(out_path)["sd_merge_recipe"])["is_inpainting"] is True
    with pytest.raises(ModelError, match="inpainting model as A"):  # the other way round cannot keep 9 channels
        merge_checkpoints(MergeRecipe(models / "tiny-b.safetensors", inpaint, None, "weighted sum", 0.5),
                          tmp_path / "wrong-way.safetensors")


def test_bake_vae_replaces_the_first_stage_model(models, tensors, tmp_path):
    vae_file = tmp_path / "b.vae.safetensors"
    save_file({k[len(VAE):]: v for k, v in tensors["b"].items() if k.startswith(VAE)}, vae_file)
    out = merge(models, tmp_path / "baked.safetensors", "No interpolation", 0.0, b="tiny-b.safetensors",
                bake_vae=vae_file)
    a, b = tensors["a"], tensors["b"]
    assert out.keys() == a.keys()
    for k in a:
        assert torch.equal(out[k], b[k] if k.startswith(VAE) else a[k]), k
    assert json.loads(metadata(tmp_path / "baked.safetensors")["sd_merge_recipe"])["bake_in_vae"] == vae_file.name


def test_discard_weights(models, tensors, tmp_path):
    out = merge(models, tmp_path / "d.safetensors", "no interpolation", 0.0,
                discard=(r"^first_stage_model\.decoder\.",))
    assert out.keys() == {k for k in tensors["a"] if not k.startswith("first_stage_model.decoder.")}


def test_bad_outputs_are_refused(models, tmp_path):
    recipe = MergeRecipe(models / "tiny-a.safetensors", models / "tiny-b.safetensors", None, "weighted sum", 0.5)
    existing = tmp_path / "exists.safetensors"
    existing.write_bytes(b"keep me")
    with pytest.raises(ModelError, match="exists already"):
        merge_checkpoints(recipe, existing)
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(ModelError, match=r"\.safetensors"):
        merge_checkpoints(recipe, tmp_path / "m.ckpt")
    with pytest.raises(ModelError, match="overwrite"):
        merge_checkpoints(recipe, models / "tiny-b.safetensors")
    with pytest.raises(ModelError, match="between 0 and 1"):
        merge_checkpoints(replace(recipe, multiplier=1.5), tmp_path / "x.safetensors")
    with pytest.raises(ModelError, match="unknown merge method"):
        merge_checkpoints(replace(recipe, method="sigmoid"), tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == [existing]


def test_the_result_loads_as_a_checkpoint(models, tensors, tmp_path):
    out = tmp_path / "loads.safetensors"
    merge_checkpoints(MergeRecipe(models / "tiny-a.safetensors", models / "tiny-b.safetensors", None,
                                  "weighted sum", 0.5, fp16=True), out)
    model = load_checkpoint(CheckpointInfo(out, out.name, hash_files=[out]), torch.device("cpu"), torch.float32)
    assert model.family.name == "sd1" and not model.family.inpainting
    expected = ((tensors["a"][CONV_IN] + tensors["b"][CONV_IN]) / 2).half().float()
    assert torch.equal(model.unet.conv_in.weight, expected)


# -- the merger as a job, through admission -------------------------------------------------------------------


def test_the_merge_job_writes_a_listed_checkpoint_and_refuses_bad_requests(easel):
    from webui.admission import Admission, Caller
    from webui.generation.errors import FieldError
    from webui.models.merge import MergeRequest
    from webui.settings import Limits

    admission = Admission(easel, Limits.none())
    admin = Caller("admin", manager=True)
    job = admission.submit("merge", MergeRequest(primary="tiny-a", secondary="tiny-b", name="ab", multiplier=0.5),
                           admin).job
    assert job.wait(120) and job.error is None, job.error
    assert job.result.name == "ab.safetensors" and any(t.startswith("ab.safetensors") for t in easel.manager.titles())
    for request, caller, field in (
            (MergeRequest(primary="tiny-a", secondary="tiny-b", name="ab"), admin, "name"),  # exists
            (MergeRequest(primary="tiny-a", secondary="tiny-b", name="../escape"), admin, "name"),
            (MergeRequest(primary="tiny-a", secondary="nope", name="x"), admin, "secondary"),
            (MergeRequest(primary="tiny-a", secondary="tiny-b", method="average"), admin, "method"),
            (MergeRequest(primary="tiny-a", secondary="tiny-b", name="y"), Caller("user"), "name")):
        with pytest.raises(FieldError) as err:
            admission.submit("merge", request, caller)
        assert err.value.field == field, (request, err.value)
