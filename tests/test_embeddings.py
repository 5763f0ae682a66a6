"""Textual-inversion embeddings: A1111 file formats, use by name in prompts, TI hashes, bad files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from webui.generation.conditioning import PromptEncoder
from webui.generation.requests import Txt2ImgRequest
from webui.images.infotext import parse_infotext
from webui.models.embeddings import split_on_embeddings
from webui.models.tokenizers import load_clip_tokenizer

FAST = dict(steps=2, width=64, height=64, seed=5, sampler_name="Euler", cfg_scale=5)


@pytest.fixture()
def library(easel):
    folder = easel.settings.models_dir / "embeddings"
    g = torch.Generator().manual_seed(0)
    # A1111 .pt layout: string_to_param holds the vectors
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.randn(2, 32, generator=g)},
                "name": "shinystyle", "step": 100}, folder / "shinystyle.pt")
    save_file({"emb_params": torch.randn(3, 32, generator=g)}, str(folder / "dark-mood.safetensors"))
    save_file({"emb_params": torch.randn(1, 768, generator=g)}, str(folder / "bigmodel.safetensors"))
    (folder / "broken.pt").write_bytes(b"not a pickle at all")
    easel.refresh()
    return easel.engine.embeddings


def arr(result) -> np.ndarray:
    return np.asarray(result.images[0]).astype(np.int16)


def test_files_are_loaded_or_skipped_with_a_reason(library):
    assert set(library.loaded) == {"shinystyle", "dark-mood", "bigmodel"}
    assert library.loaded["shinystyle"].n_vectors == 2 and library.loaded["dark-mood"].n_vectors == 3
    assert "broken" in library.skipped and "broken.pt" in library.skipped["broken"]


def test_an_embedding_used_by_name_changes_the_image(easel, library):
    model = easel.load_model("tiny-a.safetensors")
    plain = easel.engine.txt2img(model, Txt2ImgRequest(prompt="a cat", **FAST))
    styled = easel.engine.txt2img(model, Txt2ImgRequest(prompt="a cat shinystyle", **FAST))
    assert np.abs(arr(plain) - arr(styled)).mean() > 0.5
    info = parse_infotext(styled.infotexts[0])
    assert info["TI hashes"] == f"shinystyle: {library.loaded['shinystyle'].shorthash}"
    assert "TI hashes" not in parse_infotext(plain.infotexts[0])


def test_an_unknown_name_is_just_text(easel, library):
    model = easel.load_model("tiny-a.safetensors")
    with_library = easel.engine.txt2img(model, Txt2ImgRequest(prompt="a cat shinystyles", **FAST))
    bare = PromptEncoder(model.tokenizer, model.text_encoder)
    expected = bare.encode("a cat shinystyles")
    assert torch.equal(easel.engine.prompt_encoder(model, 1).encode("a cat shinystyles"), expected)
    assert "TI hashes" not in with_library.infotexts[0]


def test_an_embedding_for_another_width_is_ignored(easel, library):
    model = easel.load_model("tiny-a.safetensors")
    enc = easel.engine.prompt_encoder(model, 1)
    assert "bigmodel" not in enc.embeddings and "shinystyle" in enc.embeddings


def test_the_vectors_land_in_the_token_positions(easel, library, tiny_a):
    enc = PromptEncoder(load_clip_tokenizer(), tiny_a.text_encoder, embeddings=library.snapshot())
    chunk = enc.chunks("a (dark-mood:1.2) cat")[0]
    assert len(chunk.tokens) == 1 + 3 + 1
    assert chunk.weights == pytest.approx([1.0, 1.2, 1.2, 1.2, 1.0])
    assert chunk.fixes[0][0] == 1 and torch.equal(chunk.fixes[0][1], library.loaded["dark-mood"].vectors["clip_l"])
    assert enc.used_embeddings == {"dark-mood"}


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_vectors_equal_to_the_words_own_embeddings_give_the_words_encoding(tiny_a, clip_skip):
    """Put the token embeddings of "red circle" in as an embedding: the result must equal the plain prompt's."""
    tok = load_clip_tokenizer()
    enc = PromptEncoder(tok, tiny_a.text_encoder, clip_skip=clip_skip)
    ids = tok("a red circle", padding="max_length", max_length=77)["input_ids"]
    vectors = tiny_a.text_encoder.get_input_embeddings().weight[ids[2:4]].detach()
    swapped = list(ids)
    swapped[2:4] = [tok.pad_token_id] * 2
    with torch.no_grad():
        via_vectors, _ = enc._encode_with_vectors(torch.tensor([swapped]), [(1, vectors)])
        plain, _ = enc._run_text_encoder(torch.tensor([ids]))
        without, _ = enc._run_text_encoder(torch.tensor([swapped]))
    assert torch.allclose(via_vectors, plain, atol=1e-5)
    assert not torch.allclose(without, plain, atol=1e-3)
    assert not tiny_a.text_encoder.get_input_embeddings()._forward_hooks  # the hook is gone


def test_split_on_whole_words_only():
    assert split_on_embeddings("a shinystyle, b", ["shinystyle"]) == [("a ", None), ("shinystyle", "shinystyle"),
                                                                    (", b", None)]
    assert split_on_embeddings("shinystyles", ["shinystyle"]) == [("shinystyles", None)]


def test_a_bad_embedding_file_does_not_break_generation(easel, library):
    model = easel.load_model("tiny-a.safetensors")
    assert easel.engine.txt2img(model, Txt2ImgRequest(prompt="broken", **FAST)).images
