"""Prompt → conditioning with A1111's chunking and weighting."""
from __future__ import annotations

import pytest
import torch

from webui.generation.conditioning import PromptEncoder, ScheduledConditioning
from webui.models.tokenizers import BOS_ID, EOS_ID, clean_text, encode, load_clip_tokenizer


@pytest.fixture(scope="module")
def encoder(tiny_a):
    return PromptEncoder(load_clip_tokenizer(), tiny_a.text_encoder)


def test_tokenizer_matches_clip_ids():
    tok = load_clip_tokenizer()
    assert len(tok) == 49408 and tok.bos_token_id == BOS_ID and tok.eos_token_id == EOS_ID
    # CLIP's own ids for these words (BPE with </w> word ends, lower-cased)
    assert encode("a photo of a cat") == [320, 1125, 539, 320, 2368]
    assert encode("A  Photo\nof a CAT") == encode("a photo of a cat")
    assert clean_text("fish &amp;amp; chips") == "fish & chips"
    assert tok("x" * 10 + " word" * 100, truncation=True)["input_ids"].__len__() == 77


def test_short_prompt_is_one_chunk(encoder):
    chunks = encoder.chunks("a red circle")
    assert len(chunks) == 1 and chunks[0].tokens == encode("a red circle")
    assert encoder.encode("a red circle").shape == (1, 77, 32)


def test_long_prompt_is_split_into_75_token_chunks(encoder):
    text = " ".join(["cat"] * 160)
    chunks = encoder.chunks(text)
    assert [len(c.tokens) for c in chunks] == [75, 75, 10]
    assert encoder.encode(text).shape == (1, 77 * 3, 32)


def test_break_starts_a_new_chunk(encoder):
    chunks = encoder.chunks("red circle BREAK blue square")
    assert [c.tokens for c in chunks] == [encode("red circle"), encode("blue square")]
    assert len(encoder.chunks("breakfast BREAKfast")) == 1


def test_comma_keeps_the_last_words_together(encoder):
    words = ["cat"] * 70 + [","] + ["dog"] * 10
    chunks = encoder.chunks(" ".join(words))
    # the chunk fills at 75 tokens with a comma 5 tokens back: the words after it move on
    assert len(chunks[0].tokens) == 71 and chunks[0].tokens[-1] == encode(",")[0]
    assert chunks[1].tokens == encode("dog") * 10


def test_weights_follow_the_attention_syntax(encoder):
    chunk = encoder.chunks("a (red:1.5) [circle]")[0]
    assert chunk.weights == pytest.approx([1.0, 1.5, 1 / 1.1])


def test_weighting_keeps_the_mean(encoder):
    plain = encoder.encode("a red circle")
    weighted = encoder.encode("a (red:1.5) circle")
    assert not torch.allclose(plain, weighted)
    assert weighted.mean().item() == pytest.approx(plain.mean().item(), rel=1e-4, abs=1e-6)


def test_schedule_picks_texts_per_step_and_pads_to_equal_length(encoder):
    cond = ScheduledConditioning(encoder, ["a [red:blue:2] circle"], steps=5)
    assert [cond.texts_at(s)[0] for s in range(5)] == [
        "a red circle", "a red circle", "a red circle", "a blue circle", "a blue circle"]
    alternating = ScheduledConditioning(encoder, ["[cat|dog]"], steps=4)
    assert [alternating.texts_at(s)[0] for s in range(4)] == ["cat", "cat", "dog", "cat"]
    long_neg = ScheduledConditioning(encoder, [" ".join(["x"] * 100)], steps=5)
    length = max(cond.max_length(5), long_neg.max_length(5))
    assert cond.at(0, length).shape == long_neg.at(0, length).shape == (1, 154, 32)
    # padding is the empty chunk's encoding
    assert torch.equal(cond.at(0, length)[:, 77:], encoder.empty_chunk())


def test_many_alternating_long_texts_are_kept_within_a_byte_budget(tiny_a, monkeypatch):
    """A prompt alternating between many long texts (issue: +720 MB on the tiny model at 300 options)
    keeps at most the budget in each cache, and gives the same tensors as encoding each text afresh."""
    from webui.generation import conditioning
    monkeypatch.setattr(conditioning, "COND_CACHE_BYTES", 200_000)
    encoder = PromptEncoder(load_clip_tokenizer(), tiny_a.text_encoder)
    base = " ".join(["word"] * 140)  # two chunks: 154 tokens × 32 wide × 4 bytes ≈ 20 KB per text
    prompt = f"{base} [" + "|".join(f"option{i}" for i in range(40)) + "]"
    cond = ScheduledConditioning(encoder, [prompt], steps=40)
    texts = {cond.texts_at(s)[0] for s in range(40)}
    assert len(texts) > 30
    for step in range(40):
        got = cond.at(step, 154)
        fresh = PromptEncoder(load_clip_tokenizer(), tiny_a.text_encoder).encode(cond.texts_at(step)[0])
        assert torch.equal(got, fresh)
    assert encoder._cache.currsize <= 200_000 and cond._by_step.currsize <= 200_000
    assert len(encoder._cache) < len(texts)  # bounded: not every text is held
