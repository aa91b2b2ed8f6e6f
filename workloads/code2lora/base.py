"""The frozen code LM under every Code2LoRA arm, and the repository encoder built on it.

- `pretraining_sources`: the Python files the base may learn from: the training repositories'
  files at HEAD minus their in-repo held-out test files. Held-out repositories are never read,
  so nothing the base knows comes from a row it is judged on.
- `pretrain_base`: a byte-level BPE learned on those files (`workloads.lm.build_tokenizer`) and
  a tiny causal LM trained on them as a plain next-token loop on fixed-length windows (the
  LM toolkit's loss and engine; one process, no Ray here).
- `encode_repository`: the method's encoder: the base's mean hidden state (after its first
  `encoder_layers` layers) over each file chunk, mean over a file's chunks, then [mean over files; max over files], L2-normalised.
  It reads a repository's non-test Python files only: test files hold the targets.
- `encode_history`: the evolving track's input: the repository at its first mined commit, then
  each later mined commit's Python diff without its test files' sections, embedded the same way.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import ClassVar

import torch

from workloads.code2lora.mining import decode_test_file, in_repo_split, is_test_file
from workloads.config import require
from workloads.lm import TinyLMConfig, pad, tiny_lm
from workloads.sft import IGNORE_INDEX, TokenizedExamples, batch_at, batch_indices, train_step, warmup_cosine


@dataclasses.dataclass
class PretrainConfig:
    """The tiny base's pre-training on the training repositories' source."""

    steps: int = 200  # optimiser steps (more overfits the default three repositories)
    batch_size: int = 16  # windows per step
    window: int = 256  # tokens per window (at most model.max_positions)
    lr: float = 3e-3  # AdamW peak learning rate (warm-up, then cosine)
    bpe_merges: int = 1024  # BPE merges learned on the same source, on top of the 256 bytes

    section: ClassVar[str] = "pretrain"

    def validate(self) -> None:
        require(self.steps >= 1, "steps", "must be >= 1")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.window >= 8, "window", "must be >= 8")
        require(self.lr > 0, "lr", "must be > 0")
        require(self.bpe_merges >= 0, "bpe_merges", "must be >= 0")


MAX_SOURCE_BYTES = 1_000_000  # bigger files (generated tables, vendored bundles) are not read


def python_sources(repo, commit: str, keep=lambda path: True) -> dict[str, str]:
    """The decodable `.py` files at `commit` that `keep` accepts, by path (sorted)."""
    paths = sorted(p for p, size in repo.files(commit).items() if p.endswith(".py") and size <= MAX_SOURCE_BYTES and keep(p))
    texts = {path: decode_test_file(data) for path, data in repo.read(commit, paths).items()}
    return {path: text for path, text in sorted(texts.items()) if text}


def pretraining_sources(repo, commit: str, seed: int, held_out: float) -> dict[str, str]:
    """A training repository's Python files minus its in-repo held-out test files."""
    return python_sources(repo, commit, lambda p: not is_test_file(p) or in_repo_split(seed, repo.name, p, held_out) == "train")


def encoder_sources(repo, commit: str) -> dict[str, str]:
    """What the encoder reads of a repository: its non-test Python files."""
    return python_sources(repo, commit, lambda p: not is_test_file(p))


def windows(tokenizer, texts: Sequence[str], window: int) -> TokenizedExamples:
    """Every file as bos + tokens + eos, concatenated and cut into `window`-token rows; loss on
    every real token."""
    stream: list[int] = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        stream += ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids + [tokenizer.eos_token_id]
    rows = [stream[i:i + window] for i in range(0, max(1, len(stream)), window)]
    ids, mask = pad(rows, tokenizer.pad_token_id, side="right", width=window)
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    return TokenizedExamples(ids, mask, labels)


def pretrain_base(texts: Sequence[str], model_config: TinyLMConfig, config: PretrainConfig, seed: int,
                  log=lambda step, loss: None, device: torch.device | None = None):
    """(model, tokenizer) pre-trained from scratch on `texts` (see the module docstring)."""
    from workloads.strategies import LocalEngine

    require(config.window <= model_config.max_positions, "window", f"must be <= model.max_positions ({model_config.max_positions})")
    model_config = dataclasses.replace(model_config, bpe_merges=config.bpe_merges)
    model, tokenizer = tiny_lm(model_config, texts, seed=seed)
    data = windows(tokenizer, texts, config.window)
    engine = LocalEngine(model, lambda parameters: torch.optim.AdamW(parameters, lr=config.lr, weight_decay=0.01),
                         schedule=warmup_cosine(max(1, config.steps // 20), config.steps), device=device)
    if device is not None:
        data = data.to(device)
    for step in range(config.steps):
        loss = train_step(engine, batch_at(data, batch_indices(step, config.batch_size, 1, 0, len(data), seed)))
        log(step + 1, loss)
    model.eval()
    return model, tokenizer


@torch.no_grad()
def encode_repository(model, tokenizer, texts: Sequence[str], chunk_tokens: int, batch_size: int = 16) -> torch.Tensor:
    """[mean over files; max over files] of each file's mean chunk embedding, L2-normalised
    ([2 * hidden]); a chunk's embedding is the mean of the encoder's last hidden states over it
    (the frozen base's, by default, or an embedding model's: `load_encoder`)."""
    model.eval()
    chunks, owner = [], []
    for index, text in enumerate(texts):
        ids = tokenizer.encode(text, add_special_tokens=False)
        for start in range(0, len(ids), chunk_tokens):
            chunks.append(ids[start:start + chunk_tokens])
            owner.append(index)
    if not chunks:
        raise ValueError("the repository has no Python source to encode")
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and chunk_tokens > limit:
        raise ValueError(f"encoder_chunk_tokens ({chunk_tokens}) exceeds the encoder's max_position_embeddings ({limit})")
    # The transformer without its LM head: the last hidden states are all the encoder needs.
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model
    device = next(model.parameters()).device
    embeddings = []
    for start in range(0, len(chunks), batch_size):
        ids, mask = pad(chunks[start:start + batch_size], tokenizer.pad_token_id, side="right")
        ids, mask = ids.to(device), mask.to(device)
        hidden = backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        embeddings.append((hidden * weights).sum(dim=1) / weights.sum(dim=1))
    chunk_embeddings = torch.cat(embeddings)
    owners = torch.tensor(owner, device=chunk_embeddings.device)
    files = torch.stack([chunk_embeddings[owners == index].mean(dim=0) for index in owners.unique()])
    return torch.nn.functional.normalize(torch.cat([files.mean(dim=0), files.max(dim=0).values]), dim=0).float().cpu()


def load_encoder(encoder: str, base_dir: str, layers: int = 0):
    """(model, tokenizer) of the repository encoder: `encoder`, an HF embedding model (a
    directory or hub id, read with `AutoModel`), or, empty, the frozen base itself; with
    `layers`, only its first `layers` decoder layers (`keep_first_layers`)."""
    if not encoder:
        from workloads.lm import load_lm

        model, tokenizer = load_lm(base_dir)
    else:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(encoder)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        model = AutoModel.from_pretrained(encoder).eval()
    if layers:
        keep_first_layers(model, layers)
    return model, tokenizer


def keep_first_layers(model, layers: int) -> None:
    """Cut a decoder (in place) to its first `layers` layers: its states there are the encoding.
    Why: the encoder reads every token of a repository, so its cost is the adapter's cost; early
    layers' states cost `layers / num_layers` of the whole forward (the final norm still applies)."""
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model
    stack = getattr(backbone, "layers", None)
    if not isinstance(stack, torch.nn.ModuleList):
        raise ValueError(f"encoder_layers: a {type(backbone).__name__} has no decoder layer list to cut (use 0: all layers)")
    if not 1 <= layers <= len(stack):
        raise ValueError(f"encoder_layers ({layers}) must be between 1 and the encoder's {len(stack)} layers (or 0: all)")
    backbone.layers = stack[:layers]


def encoder_diff(diff: str) -> str:
    """A `git diff` without the sections of test files (what the encoder reads of a commit)."""
    sections = re.split(r"(?m)^(?=diff --git )", diff)
    kept = []
    for section in sections:
        header = re.match(r"diff --git a/(\S+) b/(\S+)", section)
        if header and not (is_test_file(header.group(1)) or is_test_file(header.group(2))):
            kept.append(section)
    return "".join(kept)


def encode_history(model, tokenizer, repo, first_commit: str, diffs: Sequence[str], chunk_tokens: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the repository's vector at `first_commit` [D], each later mined commit's diff vector
    [T, D]): `diffs[t]` leads to the (t+1)-th mined commit; a commit that changed only test files
    (or nothing the encoder can read) embeds as zeros."""

    def encode_or_zeros(texts: list[str]) -> torch.Tensor | None:
        texts = [text for text in texts if text.strip()]
        return encode_repository(model, tokenizer, texts, chunk_tokens) if texts else None

    start = encode_or_zeros(list(encoder_sources(repo, first_commit).values()))
    later = [encode_or_zeros([encoder_diff(diff)]) for diff in diffs]
    size = next((v.shape[0] for v in [start, *later] if v is not None), 2 * model.config.hidden_size)
    later = [torch.zeros(size) if v is None else v for v in later]
    return (torch.zeros(size) if start is None else start), (torch.stack(later) if later else torch.zeros(0, size))
