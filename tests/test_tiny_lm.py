import torch

from workloads.lm import TinyLMConfig, build_tiny_lm, build_tokenizer, count_parameters, load_lm, tiny_lm


def test_byte_level_tokenizer_round_trips_any_text():
    tokenizer = build_tokenizer()
    for text in ["Q: 12+7\n12+7=19\nAnswer: 19\n", "héllo 世界 \t!"]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
    assert len(tokenizer.encode("123", add_special_tokens=False)) == 3  # one token per digit


def test_bpe_merges_are_learned_from_task_text():
    tokenizer = build_tokenizer(["Answer: 1\n"] * 50, bpe_merges=8)
    assert len(tokenizer) == 256 + 3 + 8
    assert len(tokenizer.encode("Answer:", add_special_tokens=False)) < len("Answer:")


def test_bpe_within_lines_never_merges_across_a_newline(tmp_path):
    text = "34 hl = 340 dal\n340 dal = 3400 l\n"
    across = build_tokenizer([text] * 50, bpe_merges=40)
    assert "\n3" in "".join(across.convert_ids_to_tokens(across.encode(text, add_special_tokens=False))).replace("Ċ", "\n")
    within = build_tokenizer([text] * 50, bpe_merges=40, within_lines=True)
    ids = within.encode(text, add_special_tokens=False)
    assert [within.decode([i]) for i in ids] == ["34 hl = 340 dal", "\n", "340 dal = 3400 l", "\n"]
    # a prompt that ends at a line's end reads the same ids as the same text inside a longer one
    assert within.encode("34 hl = 340 dal\n", add_special_tokens=False) == ids[:2]
    within.save_pretrained(tmp_path)  # the saved tokenizer keeps the split
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path).encode(text, add_special_tokens=False) == ids


def test_build_save_load_round_trip(tmp_path):
    for family in ("qwen2", "llama"):
        path = build_tiny_lm(TinyLMConfig(family=family), tmp_path / family, seed=1)
        model, tokenizer = load_lm(path)
        again, _ = load_lm(str(path))
        assert 0.5e6 < count_parameters(model) < 2e6
        ids = torch.tensor([tokenizer.encode("Q: 1+1\n")])
        assert torch.equal(model(ids).logits, again(ids).logits)
        assert model.config.model_type == family


def test_same_seed_same_weights(tmp_path):
    a, _ = load_lm(build_tiny_lm(TinyLMConfig(), tmp_path / "a", seed=5))
    b, _ = load_lm(build_tiny_lm(TinyLMConfig(), tmp_path / "b", seed=5))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_not_a_model_directory_is_named(tmp_path):
    import pytest

    from workloads.config import ConfigError

    with pytest.raises(ConfigError, match="no config.json"):
        load_lm(tmp_path)


def test_saved_tokenizer_next_to_a_qwen2_model_encodes_as_built(tmp_path):
    """A tokenizer with learned merges must survive a save/load beside a Qwen2 config
    (AutoTokenizer alone would rebuild it as a Qwen2 tokenizer and encode differently)."""
    texts = ["Answer the question using the documents.", "Isan Gomi studied at Gotoka University."] * 20
    cfg = TinyLMConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, bpe_merges=60)
    saved = build_tiny_lm(cfg, tmp_path / "model", texts)
    _, built = tiny_lm(cfg, texts)
    _, loaded = load_lm(saved)
    sample = "Answer the question: where did Isan Gomi study?"
    assert loaded.encode(sample) == built.encode(sample)
    assert len(loaded) == len(built) and loaded.padding_side == "left"
