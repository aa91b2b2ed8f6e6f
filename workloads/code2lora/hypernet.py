"""The Code2LoRA hypernetworks: a repository vector (and, for Evo, its commit history) in, LoRA
adapters for a frozen code LM out.

The base model is wrapped once with peft (`LoraConfig` on the projection types), so the LoRA
modules, their scaling and the adapter format are peft's own. The generated A [r, d_in] and
B [d_out, r] of each projection type (shared across layers) replace those modules' weights
through `torch.func.functional_call`: the forward pass reads the generated tensors, so the
loss's gradient reaches the hypernetwork, and nothing in the model is mutated. `export_adapter`
writes the same adapter as a standard peft directory (`PeftModel.from_pretrained` loads it).

Each matrix is tanh(raw) times a learned scale bounded by `max_scale` (sigmoid), as in the
method; the B half of the output layer starts at zero, so an untrained hypernetwork leaves
the base model's outputs unchanged, as a fresh LoRA does.

`EvolvingHypernetwork` (Evo) puts a GRU in front of the same head: its state starts from the
repository vector of the first mined commit and reads one embedded diff per later commit, so the
adapter for a commit depends on the history up to it and on nothing after it.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from workloads.config import require

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj", "down_proj")
ADAPTER_NAME = "default"


@dataclasses.dataclass
class HypernetConfig:
    """The generated adapters' rank and scaling, and the hypernetwork's size."""

    rank: int = 8  # LoRA rank r of every generated adapter
    alpha: float = 16.0  # LoRA alpha (peft scales B A by alpha / r)
    width: int = 256  # hidden width of the 2-layer GELU MLP
    max_scale: float = 0.2  # bound on each matrix's learned scale (entries lie in [-max_scale, max_scale])
    projections: list[str] = dataclasses.field(default_factory=lambda: list(PROJECTIONS))  # projection types that get adapters (those the base has)
    bptt: int = 4  # Evo: the GRU state is cut from the graph every bptt diffs (truncated BPTT); 0: never

    section: ClassVar[str] = "hypernet"

    def validate(self) -> None:
        require(self.rank >= 1, "rank", "must be >= 1")
        require(self.width >= 1, "width", "must be >= 1")
        require(self.max_scale > 0, "max_scale", "must be > 0")
        require(self.bptt >= 0, "bptt", "must be >= 0 (0: back-propagate through the whole history)")
        unknown = sorted(set(self.projections) - set(PROJECTIONS))
        require(not unknown, "projections", f"unknown {unknown}; expected a subset of {list(PROJECTIONS)}")


def lora_model(base, config: HypernetConfig):
    """The base wrapped in peft LoRA modules on the configured projection types it has; every
    parameter frozen (the adapters' weights come from the hypernetwork)."""
    from peft import LoraConfig, get_peft_model

    present = sorted({name.rsplit(".", 1)[-1] for name, _ in base.named_modules()} & set(config.projections))
    if not present:
        raise ValueError(f"hypernet.projections: the base model has none of {list(config.projections)}")
    model = get_peft_model(base, LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0,
                                            target_modules=present, bias="none"), adapter_name=ADAPTER_NAME)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def lora_slots(model) -> dict[str, list[tuple[str, str]]]:
    """projection type -> [(A weight name, B weight name) per layer], in `named_parameters` terms."""
    slots: dict[str, list[tuple[str, str]]] = defaultdict(list)
    suffix_a, suffix_b = f".lora_A.{ADAPTER_NAME}.weight", f".lora_B.{ADAPTER_NAME}.weight"
    names = {name for name, _ in model.named_parameters()}
    for name in sorted(names):
        if name.endswith(suffix_a):
            module = name.removesuffix(suffix_a)
            slots[module.rsplit(".", 1)[-1]].append((name, module + suffix_b))
    return dict(slots)


def slot_shapes(model, slots: dict[str, list[tuple[str, str]]]) -> dict[str, tuple[int, int, int]]:
    """projection type -> (r, d_in, d_out), read from the peft modules (the same in every layer)."""
    parameters = dict(model.named_parameters())
    shapes = {}
    for kind, pairs in slots.items():
        a_name, b_name = pairs[0]
        rank, d_in = parameters[a_name].shape
        d_out = parameters[b_name].shape[0]
        shapes[kind] = (rank, d_in, d_out)
    return shapes


class StaticHypernetwork(nn.Module):
    """MLP (2 layers, GELU) from a repository vector to one (A, B) per projection type."""

    def __init__(self, repo_dim: int, shapes: dict[str, tuple[int, int, int]], config: HypernetConfig):
        super().__init__()
        self.shapes, self.max_scale = dict(sorted(shapes.items())), config.max_scale
        sizes = []
        for rank, d_in, d_out in self.shapes.values():
            sizes += [rank * d_in, d_out * rank]
        self.sizes = sizes
        self.body = nn.Sequential(nn.Linear(repo_dim, config.width), nn.GELU(), nn.Linear(config.width, sum(sizes)))
        with torch.no_grad():  # B starts at zero: an untrained hypernetwork leaves the base unchanged
            offset = 0
            for index, size in enumerate(sizes):
                if index % 2 == 1:
                    self.body[2].weight[offset:offset + size].zero_()
                    self.body[2].bias[offset:offset + size].zero_()
                offset += size
        self.scale_logits = nn.Parameter(torch.zeros(len(sizes)))  # one learned scale per matrix

    def forward(self, repo_vector: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """One repository vector [repo_dim] -> {projection type: (A [r, d_in], B [d_out, r])}."""
        raw = self.body(repo_vector).split(self.sizes)
        scales = self.max_scale * torch.sigmoid(self.scale_logits)
        adapters = {}
        for index, (kind, (rank, d_in, d_out)) in enumerate(self.shapes.items()):
            a = scales[2 * index] * torch.tanh(raw[2 * index]).view(rank, d_in)
            b = scales[2 * index + 1] * torch.tanh(raw[2 * index + 1]).view(d_out, rank)
            adapters[kind] = (a, b)
        return adapters


class EvolvingHypernetwork(nn.Module):
    """Evo: a GRU over a repository's commit history, the static head on its state.

    state_0 = tanh(W repo_vector) (the repository at its first mined commit); state_t =
    GRU(diff_t, state_{t-1}), diff_t the t-th later commit's embedded diff (embedded like a
    repository, so of the same size); the adapter for commit t is head(state_t)."""

    def __init__(self, repo_dim: int, shapes: dict[str, tuple[int, int, int]], config: HypernetConfig):
        super().__init__()
        self.bptt = config.bptt
        self.start = nn.Sequential(nn.Linear(repo_dim, config.width), nn.Tanh())
        self.cell = nn.GRUCell(repo_dim, config.width)
        self.head = StaticHypernetwork(config.width, shapes, config)

    def states(self, start_vector: torch.Tensor, diffs: torch.Tensor) -> torch.Tensor:
        """[1 + T, width]: the state at each mined commit, from the first vector and T diffs [T, D]."""
        state = self.start(start_vector).unsqueeze(0)
        states = [state]
        for step, diff in enumerate(diffs):
            if self.bptt and step and step % self.bptt == 0:
                state = state.detach()  # truncated BPTT: no gradient flows further back than bptt diffs
            state = self.cell(diff.unsqueeze(0), state)
            states.append(state)
        return torch.cat(states)

    def forward(self, start_vector: torch.Tensor, diffs: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The adapter after the whole history (the repository at its last mined commit)."""
        return self.head(self.states(start_vector, diffs)[-1])


def adapter_weights(slots: dict[str, list[tuple[str, str]]], adapters: dict[str, tuple[torch.Tensor, torch.Tensor]]
                    ) -> dict[str, torch.Tensor]:
    """The generated (A, B) of each type placed in every layer's slot (shared across layers)."""
    weights = {}
    for kind, pairs in slots.items():
        a, b = adapters[kind]
        for a_name, b_name in pairs:
            weights[a_name], weights[b_name] = a, b
    return weights


def adapted_logits(model, slots, adapters, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The peft model's logits with the generated adapters in its LoRA slots (differentiable in them)."""
    from torch.func import functional_call

    output = functional_call(model, adapter_weights(slots, adapters), args=(),
                             kwargs={"input_ids": input_ids, "attention_mask": attention_mask}, strict=False)
    return output.logits


def write_adapter(model, weights: dict[str, torch.Tensor], directory: str | Path) -> Path:
    """LoRA `weights` (by parameter name) copied into the peft model's slots and saved as a
    standard peft adapter directory (`PeftModel.from_pretrained` loads it)."""
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            parameters[name].copy_(value)
    model.save_pretrained(str(directory), selected_adapters=[ADAPTER_NAME])
    return Path(directory)


def export_adapter(model, slots, adapters, directory: str | Path) -> Path:
    """The generated adapter as a standard peft adapter directory."""
    return write_adapter(model, adapter_weights(slots, adapters), directory)
