"""The static Code2LoRA hypernetwork: generated adapters go into peft's LoRA slots functionally
(gradients reach the hypernetwork, the base stays frozen), start as a no-op, stay within their
bound, condition on the repository vector, and export as a standard peft adapter."""

import pytest
import torch

from workloads.code2lora.hypernet import (
    HypernetConfig,
    StaticHypernetwork,
    adapted_logits,
    export_adapter,
    lora_model,
    lora_slots,
    slot_shapes,
)
from workloads.lm import tiny_lm
from workloads.lm.tiny import TinyLMConfig
from workloads.sft import masked_token_cross_entropy, tokenize_examples

SMALL = TinyLMConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
REPO_DIM = 8


def build(config: HypernetConfig, seed: int = 0):
    base, tokenizer = tiny_lm(SMALL, seed=seed)
    model = lora_model(base, config)
    slots = lora_slots(model)
    torch.manual_seed(seed)
    return model, tokenizer, slots, StaticHypernetwork(REPO_DIM, slot_shapes(model, slots), config)


def repo_vectors(n: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, REPO_DIM, generator=torch.Generator().manual_seed(1)), dim=-1)


def test_every_projection_type_gets_one_adapter_shared_by_all_layers_of_the_peft_shapes():
    model, _, slots, hypernet = build(HypernetConfig(rank=4, width=32))
    assert {kind: len(pairs) for kind, pairs in slots.items()} == {k: 2 for k in
                                                                   ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj", "down_proj")}
    adapters = hypernet(repo_vectors(1)[0])
    # hidden 64, 4 heads of 16, 2 key/value heads, MLP 128
    expected = {"q_proj": (64, 64), "k_proj": (64, 32), "v_proj": (64, 32), "o_proj": (64, 64),
                "up_proj": (64, 128), "gate_proj": (64, 128), "down_proj": (128, 64)}
    for kind, (d_in, d_out) in expected.items():
        a, b = adapters[kind]
        assert a.shape == (4, d_in) and b.shape == (d_out, 4)
        assert a.abs().max() <= 0.2 and bool((b == 0).all())  # bounded; B starts at zero


def test_an_untrained_hypernetwork_leaves_the_base_unchanged_and_gradients_reach_only_the_hypernetwork():
    model, tokenizer, slots, hypernet = build(HypernetConfig(rank=4, width=32))
    examples = tokenize_examples(tokenizer, ["assert f(1) == "], ["2"], 0)
    with model.disable_adapter():
        base_logits = model(input_ids=examples.input_ids, attention_mask=examples.attention_mask).logits
    logits = adapted_logits(model, slots, hypernet(repo_vectors(1)[0]), examples.input_ids, examples.attention_mask)
    torch.testing.assert_close(logits, base_logits)
    masked_token_cross_entropy(logits, examples.labels).backward()
    assert hypernet.body[2].weight.grad.abs().sum() > 0  # through B, zero at the start
    assert all(p.grad is None for p in model.parameters())


def test_the_generated_adapter_depends_on_the_repository():
    """Two repositories, the same prefix, different expected values: only adapters conditioned
    on the repository vector can fit both. A short seeded run makes each repository's own value
    the likelier one, by a margin."""
    config = HypernetConfig(rank=4, width=64, max_scale=1.0)
    model, tokenizer, slots, hypernet = build(config)
    examples = tokenize_examples(tokenizer, ["x = f()\nassert x == "] * 2, ["1", "2"], 0)
    vectors = repo_vectors(2)
    digit_position = int((examples.labels[0] != -100).nonzero()[0]) - 1
    one, two = tokenizer.convert_tokens_to_ids(["1", "2"])

    def margins() -> list[float]:
        with torch.no_grad():
            out = []
            for repo, (mine, other) in enumerate([(one, two), (two, one)]):
                logits = adapted_logits(model, slots, hypernet(vectors[repo]), examples.input_ids[repo:repo + 1],
                                        examples.attention_mask[repo:repo + 1])[0, digit_position]
                out.append(float(logits[mine] - logits[other]))
            return out

    before = margins()
    assert abs(sum(before)) < 1e-5  # the untrained adapter is a no-op: what one repository gains, the other loses
    optimizer = torch.optim.Adam(hypernet.parameters(), lr=3e-3)
    for _ in range(150):
        loss = sum(masked_token_cross_entropy(adapted_logits(model, slots, hypernet(vectors[r]), examples.input_ids[r:r + 1],
                                                             examples.attention_mask[r:r + 1]), examples.labels[r:r + 1])
                   for r in range(2))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(m > 0.5 for m in margins()), margins()  # measured 1.22 and 1.31


def test_an_exported_adapter_loads_with_peft_and_gives_the_same_logits(tmp_path):
    from peft import PeftModel

    config = HypernetConfig(rank=4, width=32, max_scale=1.0)
    model, tokenizer, slots, hypernet = build(config)
    with torch.no_grad():  # a hypernetwork that writes a non-trivial adapter
        for parameter in hypernet.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    examples = tokenize_examples(tokenizer, ["assert g(3) == ", "x = 1\nassert x in "], ["4", "[1]"], 0)
    adapters = hypernet(repo_vectors(1)[0])
    generated = adapted_logits(model, slots, adapters, examples.input_ids, examples.attention_mask)
    directory = export_adapter(model, slots, adapters, tmp_path / "adapter")
    assert (directory / "adapter_config.json").is_file() and (directory / "adapter_model.safetensors").is_file()
    fresh_base, _ = tiny_lm(SMALL, seed=0)
    loaded = PeftModel.from_pretrained(fresh_base, str(directory))
    with torch.no_grad():
        reloaded = loaded(input_ids=examples.input_ids, attention_mask=examples.attention_mask).logits
        with loaded.disable_adapter():
            base = loaded(input_ids=examples.input_ids, attention_mask=examples.attention_mask).logits
    torch.testing.assert_close(reloaded, generated.detach(), atol=1e-5, rtol=1e-4)
    assert (reloaded - base).abs().max() > 1e-3  # the adapter does something


def test_projection_types_are_checked():
    with pytest.raises(Exception, match="projections: unknown"):
        from workloads.config import load_config
        from dataclasses import make_dataclass, field

        holder = make_dataclass("Holder", [("hypernet", HypernetConfig, field(default_factory=HypernetConfig))])
        load_config(holder, None, ["hypernet.projections=[q_proj,fc9]"])
