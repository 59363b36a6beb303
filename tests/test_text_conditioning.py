"""The text path matches ComfyUI's conventions (docs/anima_arch.md 2.4), with the real tokenizers."""

from __future__ import annotations

import pytest
import torch

from animad.anima import load as model_load
from animad.anima.text import T5Ids, TextEmbedding, TextEncoder, adapter_context, load_qwen_tokenizer


@pytest.fixture(scope="module")
def real_tokenizers(shared_tokenizers):
    if shared_tokenizers is None:
        pytest.skip("the real tokenizer files (../shared/tokenizers) are not in this checkout")
    return load_qwen_tokenizer(shared_tokenizers / "qwen3"), T5Ids(shared_tokenizers / "t5")


@pytest.fixture(scope="module")
def stack(tiny_models):
    dit, adapter = model_load.load_dit(tiny_models["dit"])
    model = model_load.load_text_encoder(tiny_models["text_encoder"])
    tok = tiny_models["tokenizers"]
    return TextEncoder(model, load_qwen_tokenizer(tok / "qwen3"), T5Ids(tok / "t5")), adapter


def test_empty_prompt_is_encoded_like_comfyui(real_tokenizers, tiny_models):
    qwen, t5 = real_tokenizers
    encoder = TextEncoder(model_load.load_text_encoder(tiny_models["text_encoder"]), qwen, t5)
    assert encoder.qwen_ids("") == [151643]  # one <|endoftext|> pad token (ComfyUI min_length=1)
    assert t5("") == [1]  # just </s>


def test_caption_ids_follow_the_conventions(real_tokenizers):
    qwen, t5 = real_tokenizers
    ids = qwen.encode("@boerboer, 1girl, solo", add_special_tokens=False).ids
    assert ids and 151643 not in ids and 151644 not in ids  # no BOS/EOS/pad added on the Qwen side
    t5_ids = t5("@boerboer, 1girl, solo")
    assert t5_ids[-1] == 1 and t5_ids.count(1) == 1  # T5 ends with exactly one </s>
    assert qwen.decode(ids) == "@boerboer, 1girl, solo"


def test_batched_context_equals_each_prompt_alone(stack):
    """A batch uses key masks; ComfyUI runs each prompt unpadded and zero-pads the output to 512 rows."""
    encoder, adapter = stack
    prompts = ["@demo, red circle, white background, simple", "blue", ""]
    with torch.no_grad():
        embeddings = encoder.encode(prompts)
        batched = adapter_context(adapter, embeddings, "cpu")
        for row, emb in enumerate(embeddings):
            alone = adapter(source_hidden_states=emb.qwen[None], target_input_ids=emb.t5_ids[None])
            length = emb.t5_ids.shape[0]
            assert batched.shape[1] == 512
            torch.testing.assert_close(batched[row, :length], alone[0, :length], atol=1e-5, rtol=1e-4)
            assert batched[row, length:].abs().max() == 0  # zero rows after the prompt, as ComfyUI pads


def test_qwen_states_do_not_depend_on_batch_padding(stack):
    encoder, _ = stack
    with torch.no_grad():
        short_alone = encoder.encode(["blue"])[0].qwen
        short_in_batch = encoder.encode(["blue", "a much longer caption, with, many, tags, here"])[0].qwen
    torch.testing.assert_close(short_alone, short_in_batch, atol=1e-5, rtol=1e-4)


def test_long_prompt_is_never_truncated(stack):
    encoder, adapter = stack
    long_emb = TextEmbedding(torch.randn(700, encoder.model.config.hidden_size),
                             torch.cat([torch.full((699,), 5), torch.tensor([1])]))
    with torch.no_grad():
        context = adapter_context(adapter, [long_emb], "cpu")
    assert context.shape[1] == 700


def test_the_text_cache_keeps_its_keys_on_disk_and_reads_entries_written_before(stack, tmp_path):
    # Users' caches hold one safetensors file per caption with the parts named "qwen" and "t5_ids": a
    # new entry is written with those names, and an entry written before is read back without the encoder.
    from safetensors.torch import load_file, save_file

    from animad.train.caches import TensorCache, cache_texts, text_key

    encoder, _ = stack
    cache = TensorCache(tmp_path / "cache")
    fresh = cache_texts(["@demo, red"], lambda: encoder, "te", "tok", cache)
    stored = load_file(str(cache.path(text_key("@demo, red", "te", "tok"))))
    assert set(stored) == {"qwen", "t5_ids"}
    assert stored["qwen"].dtype == torch.float32 and stored["t5_ids"].dtype == torch.int64
    torch.testing.assert_close(stored["qwen"], fresh["@demo, red"].qwen, atol=0, rtol=0)

    old = {"qwen": torch.randn(3, 32), "t5_ids": torch.tensor([5, 6, 1])}  # as main wrote them
    for caption in ("blue", ""):
        cache.path(text_key(caption, "te", "tok")).parent.mkdir(parents=True, exist_ok=True)
        save_file(old, str(cache.path(text_key(caption, "te", "tok"))))

    def no_encoder():
        raise AssertionError("every caption was cached: the encoder must not be loaded")

    loaded = cache_texts(["blue"], no_encoder, "te", "tok", cache)
    assert set(loaded) == {"blue", ""}
    assert torch.equal(loaded["blue"].qwen, old["qwen"]) and torch.equal(loaded["blue"].t5_ids, old["t5_ids"])
