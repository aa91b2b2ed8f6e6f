"""Code2LoRA's arms as trainable modules over one frozen peft-wrapped base, and their evaluation.

Every arm ends as LoRA weights in the same peft slots, chosen per repository:

| arm        | what is trained                           | the adapter a repository gets          |
|------------|-------------------------------------------|----------------------------------------|
| `static`   | the hypernetwork (`StaticHypernetwork`)   | generated from its repository vector   |
| `evo`      | the GRU hypernetwork (`EvolvingHypernetwork`) | generated from its history up to the commit |
| `shared`   | one peft LoRA on all training rows        | the same one for every repository      |
| `per_repo` | one peft LoRA per training repository     | its own (none exists for a held-out repository) |
| `none`     | nothing                                   | no adapter: the base alone             |

A trainee's `forward(input_ids, attention_mask, repo_index, commit_index)` returns logits for a
batch that mixes repositories (and, for evo, commits: the hypernetworks generate one adapter per
(repository, commit) present, inside one forward, so data-parallel training all-reduces once per
step), and `adapter_for(repo)` the LoRA weights by parameter name that evaluation copies into
the slots (for evo, the adapter at the repository's last mined commit); `trained_state` /
`load_trained` carry what was trained (the hypernetwork, or the LoRA weights) between processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from workloads.code2lora.hypernet import (
    EvolvingHypernetwork,
    HypernetConfig,
    StaticHypernetwork,
    adapted_logits,
    adapter_weights,
    lora_model,
    lora_slots,
    slot_shapes,
)
from workloads.code2lora.mining import exact_match
from workloads.lm import greedy_complete
from workloads.sft import masked_token_cross_entropy

ARMS = ("static", "evo", "shared", "per_repo", "none")
TRAINED_ON_RAY_TRAIN = ("static", "evo", "shared")  # per_repo trains one small LoRA per repository as Ray tasks


def lora_names(model) -> list[str]:
    return [name for name, _ in model.named_parameters() if ".lora_" in name]


class HypernetTrainee(nn.Module):
    """What the hypernetwork arms share: the frozen peft model, the hypernetwork (made by
    `make_hypernet(slot shapes)` after seeding) whose state is what was trained, and a forward
    that runs each group of rows with the adapter generated for it."""

    def __init__(self, base, config: HypernetConfig, make_hypernet, seed: int):
        super().__init__()
        self.model = lora_model(base, config)
        self.slots = lora_slots(self.model)
        torch.manual_seed(seed)
        self.hypernet = make_hypernet(slot_shapes(self.model, self.slots))

    def grouped_logits(self, input_ids, attention_mask, groups) -> torch.Tensor:
        """Logits of the batch; `groups` yields (row mask, generated adapters) covering every row."""
        logits = None
        for rows, adapters in groups:
            out = adapted_logits(self.model, self.slots, adapters, input_ids[rows], attention_mask[rows])
            if logits is None:
                logits = out.new_zeros((input_ids.shape[0], *out.shape[1:]))
            logits[rows] = out
        return logits

    def weights(self, adapters: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Generated adapters as LoRA weights by parameter name, detached."""
        return {k: v.detach().clone() for k, v in adapter_weights(self.slots, adapters).items()}

    def trained_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.hypernet.state_dict().items()}

    def load_trained(self, state: dict[str, torch.Tensor]) -> None:
        self.hypernet.load_state_dict(state)


class StaticTrainee(HypernetTrainee):
    """The static hypernetwork; repository vectors as a buffer [R, D]."""

    def __init__(self, base, config: HypernetConfig, repo_vectors: torch.Tensor, seed: int = 0):
        super().__init__(base, config, lambda shapes: StaticHypernetwork(repo_vectors.shape[1], shapes, config), seed)
        self.register_buffer("repo_vectors", repo_vectors.float(), persistent=False)

    def forward(self, input_ids, attention_mask, repo_index, commit_index=None):
        groups = ((repo_index == repo, self.hypernet(self.repo_vectors[repo])) for repo in repo_index.unique().tolist())
        return self.grouped_logits(input_ids, attention_mask, groups)

    def adapter(self, repo_vector: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return self.weights(self.hypernet(repo_vector.float()))

    def adapter_for(self, repo: int) -> dict[str, torch.Tensor]:
        return self.adapter(self.repo_vectors[repo])


class EvoTrainee(HypernetTrainee):
    """The GRU hypernetwork; each repository's first-commit vector [R, D] and its later commits'
    diff vectors, padded [R, T, D] (`history_lengths` [R] real)."""

    def __init__(self, base, config: HypernetConfig, start_vectors: torch.Tensor, diff_vectors: torch.Tensor,
                 history_lengths: torch.Tensor, seed: int = 0):
        super().__init__(base, config, lambda shapes: EvolvingHypernetwork(start_vectors.shape[1], shapes, config), seed)
        self.register_buffer("start_vectors", start_vectors.float(), persistent=False)
        self.register_buffer("diff_vectors", diff_vectors.float(), persistent=False)
        self.register_buffer("history_lengths", history_lengths.long(), persistent=False)

    def forward(self, input_ids, attention_mask, repo_index, commit_index):
        def groups():
            for repo in repo_index.unique().tolist():
                in_repo = repo_index == repo
                # one pass of the GRU per repository, as far as the latest commit in the batch
                last = int(commit_index[in_repo].max())
                states = self.hypernet.states(self.start_vectors[repo], self.diff_vectors[repo, :last])
                for commit in commit_index[in_repo].unique().tolist():
                    yield in_repo & (commit_index == commit), self.hypernet.head(states[commit])

        return self.grouped_logits(input_ids, attention_mask, groups())

    def adapter_for(self, repo: int) -> dict[str, torch.Tensor]:
        """The adapter after the repository's whole mined history (its last mined commit)."""
        with torch.no_grad():
            return self.weights(self.hypernet(self.start_vectors[repo], self.diff_vectors[repo, :int(self.history_lengths[repo])]))


class LoRATrainee(nn.Module):
    """A plain peft LoRA (peft's own initialisation: B = 0) on the frozen base; `repo_index` is ignored."""

    def __init__(self, base, config: HypernetConfig, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.model = lora_model(base, config)
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(".lora_" in name)

    def forward(self, input_ids, attention_mask, repo_index=None, commit_index=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def adapter(self) -> dict[str, torch.Tensor]:
        return {name: parameter.detach().cpu().clone() for name, parameter in self.model.named_parameters() if ".lora_" in name}

    def adapter_for(self, repo: int) -> dict[str, torch.Tensor]:
        return self.adapter()  # the same adapter for every repository

    trained_state = adapter

    def load_trained(self, state: dict[str, torch.Tensor]) -> None:
        load_adapter(self.model, state)


def batch_loss(trainee, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy on the target tokens (and eos) only."""
    logits = trainee(batch["input_ids"], batch["attention_mask"], batch["repo_index"], batch["commit_index"])
    return masked_token_cross_entropy(logits, batch["labels"])


def load_adapter(model, adapter: dict[str, torch.Tensor] | None) -> None:
    """Copy `adapter` into the peft model's LoRA slots; None zeroes them (B = 0: the base alone)."""
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name in lora_names(model):
            if adapter is None:
                parameters[name].zero_()
            else:
                parameters[name].copy_(adapter[name])


def complete(model, tokenizer, adapter, prefixes: Sequence[str], max_new_tokens: int, prompt_tokens: int) -> list[str]:
    """Greedy completions of `prefixes` with `adapter` in the slots."""
    load_adapter(model, adapter)
    return greedy_complete(model, tokenizer, list(prefixes), max_new_tokens, batch_size=32, max_prompt_tokens=prompt_tokens)


def exact_matches(predictions: Sequence[str], targets: Sequence[str]) -> list[bool]:
    return [exact_match(p, t) for p, t in zip(predictions, targets)]


GENERATOR_FILE, GENERATOR_CONFIG = "hypernet.pt", "code2lora.json"


def save_generator(directory, trainee: StaticTrainee, base, tokenizer, hypernet: HypernetConfig, settings: dict) -> Path:
    """A trained static hypernetwork as one directory: `base/` (the frozen base, without adapter
    slots, saved whole so that the directory stands alone), `hypernet.pt` and `code2lora.json`
    (the hypernetwork's config, the repository vectors' size, and `settings`: the encoder and
    completion settings)."""
    import dataclasses
    import json

    directory = Path(directory)
    base.save_pretrained(directory / "base")
    tokenizer.save_pretrained(directory / "base")
    torch.save(trainee.trained_state(), directory / GENERATOR_FILE)
    (directory / GENERATOR_CONFIG).write_text(json.dumps({"hypernet": dataclasses.asdict(hypernet),
                                                          "repo_dim": int(trainee.repo_vectors.shape[1]), **settings}, indent=1))
    return directory


def load_generator(directory):
    """(static trainee, tokenizer, settings) from a `save_generator` directory; the repository
    vectors are supplied per call (`trainee.adapter(vector)`)."""
    import json

    from workloads.lm import load_lm

    directory = Path(directory)
    if not (directory / GENERATOR_CONFIG).is_file():
        raise ValueError(f"{directory}: not a Code2LoRA generator (no {GENERATOR_CONFIG}; `code2lora` with arm=static writes one)")
    settings = json.loads((directory / GENERATOR_CONFIG).read_text())
    config = HypernetConfig(**settings.pop("hypernet"))
    base, tokenizer = load_lm(directory / "base")
    trainee = StaticTrainee(base, config, torch.zeros(1, settings["repo_dim"]))
    trainee.load_trained(torch.load(directory / GENERATOR_FILE, weights_only=True))
    trainee.eval()
    return trainee, tokenizer, settings
