"""The LM toolkit: tokenizers shaped like real checkpoints' (no BOS; a chat template), one
padding convention whose positions come from the mask, log-probs, top-k and zero losses."""

import math

import pytest
import torch
import torch.nn.functional as F

from workloads.lm import (
    TinyLMConfig,
    build_tiny_lm,
    completion_logprobs,
    continuation_logprobs,
    encode_text,
    format_prompt,
    forward_logits,
    load_lm,
    pad,
    sample_groups,
    tiny_lm,
    top_k_logprobs,
    zero_loss,
)
from workloads.sft import IGNORE_INDEX, tokenize_examples

SMALL = dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)


@pytest.fixture(scope="module")
def chat_lm(tmp_path_factory):
    """A Qwen2-chat-style tiny model saved and loaded back as a user's checkpoint would be."""
    directory = build_tiny_lm(TinyLMConfig(tokenizer="qwen2-chat", **SMALL), tmp_path_factory.mktemp("chat"))
    return load_lm(directory)


def test_qwen2_style_tokenizers_have_no_bos_and_encode_prompts_without_one():
    for style in ("qwen2", "qwen2-chat"):
        _, tokenizer = tiny_lm(TinyLMConfig(tokenizer=style, **SMALL))
        assert tokenizer.bos_token is None and tokenizer.bos_token_id is None
        assert encode_text(tokenizer, "Q: 1+1\n") == tokenizer.encode("Q: 1+1\n", add_special_tokens=False)
    _, plain = tiny_lm(TinyLMConfig(**SMALL))
    assert encode_text(plain, "Q: 1+1\n")[0] == plain.convert_tokens_to_ids("<s>")
    assert encode_text(plain, "<s>Q") == [plain.convert_tokens_to_ids("<s>"), plain.convert_tokens_to_ids("Q")]  # not twice


def test_the_chat_template_survives_saving_and_formats_chatml(chat_lm):
    _, tokenizer = chat_lm
    assert format_prompt(tokenizer, "Q: 1+1") == "<|im_start|>user\nQ: 1+1<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    _, plain = tiny_lm(TinyLMConfig(**SMALL))
    assert format_prompt(plain, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "\nR: ") == "a\n\nb\nR: "


def test_sft_examples_of_a_chat_tokenizer_put_the_loss_on_the_answer_and_its_im_end(chat_lm):
    _, tokenizer = chat_lm
    prompt = format_prompt(tokenizer, "Q: 1+1")
    data = tokenize_examples(tokenizer, [prompt], ["2"], max_length=0)
    ids = data.input_ids[0].tolist()
    assert ids == tokenizer.encode(prompt + "2<|im_end|>", add_special_tokens=False)
    labelled = [t for t, label in zip(ids, data.labels[0].tolist()) if label != IGNORE_INDEX]
    assert labelled == tokenizer.encode("2", add_special_tokens=False) + [tokenizer.eos_token_id]


def test_padding_on_either_side_scores_the_same_tokens_alike(chat_lm):
    model, tokenizer = chat_lm
    sequences = [encode_text(tokenizer, "Q: 12+7\nA"), encode_text(tokenizer, "Q: 3\n")]
    left_ids, left_mask = pad(sequences, tokenizer.pad_token_id, side="left")
    right_ids, right_mask = pad(sequences, tokenizer.pad_token_id, side="right")
    assert left_mask.tolist()[1] == [0] * (len(sequences[0]) - len(sequences[1])) + [1] * len(sequences[1])
    with torch.no_grad():
        left = forward_logits(model, left_ids, left_mask)
        right = forward_logits(model, right_ids, right_mask)
        alone = forward_logits(model, torch.tensor([sequences[1]]), torch.ones(1, len(sequences[1]), dtype=torch.long))
    short = len(sequences[1])
    assert torch.allclose(left[1, -short:], alone[0], atol=1e-5)
    assert torch.allclose(right[1, :short], alone[0], atol=1e-5)


def test_continuation_and_completion_logprobs_agree_with_a_direct_computation(chat_lm):
    model, tokenizer = chat_lm
    context, continuation = encode_text(tokenizer, "Q: 5\n"), tokenizer.encode("A: 5", add_special_tokens=False)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([context + continuation])).logits[0]
        direct = sum(F.log_softmax(logits[len(context) + j - 1], dim=-1)[token].item() for j, token in enumerate(continuation))
        scored = continuation_logprobs(model, [context, context[:2]], [continuation, [7]], tokenizer.pad_token_id)
        rollouts = sample_groups(model, tokenizer, ["Q: 5\n"], group_size=2, max_new_tokens=4, generator_seed=0)
        per_token = completion_logprobs(model, rollouts.input_ids, rollouts.attention_mask, rollouts.completion_mask)
    assert scored[0].item() == pytest.approx(direct, abs=1e-4)
    assert per_token.shape == rollouts.completion_mask.shape
    row = rollouts.input_ids[0][rollouts.attention_mask[0].bool()].tolist()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([row])).logits[0]
    start = len(encode_text(tokenizer, "Q: 5\n"))
    expected = [F.log_softmax(logits[start + j - 1], dim=-1)[row[start + j]].item() for j in range(len(row) - start)]
    assert per_token[0, : len(expected)].tolist() == pytest.approx(expected, abs=1e-4)


def test_top_k_keeps_the_largest_log_probs_and_leaves_the_tail_mass():
    logprobs = torch.log(torch.tensor([[0.1, 0.5, 0.15, 0.25]]))
    ids, values = top_k_logprobs(logprobs, 2)
    assert ids.tolist() == [[1, 3]] and values.exp().tolist()[0] == pytest.approx([0.5, 0.25])
    assert 1 - values.exp().sum().item() == pytest.approx(0.25)  # the tail bucket
    assert math.isclose(top_k_logprobs(logprobs, 10)[1].exp().sum().item(), 1.0, rel_tol=1e-6)  # k past the vocabulary


def test_a_zero_loss_reaches_every_parameter_with_a_zero_gradient(chat_lm):
    model, tokenizer = chat_lm
    ids, mask = pad([encode_text(tokenizer, "Q")], tokenizer.pad_token_id)
    model.zero_grad(set_to_none=True)
    loss = zero_loss(model, ids, mask)
    loss.backward()
    assert loss.item() == 0.0
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads) and all(float(g.abs().sum()) == 0.0 for g in grads)
