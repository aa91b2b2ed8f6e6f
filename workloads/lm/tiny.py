"""Tiny causal LMs built from a transformers config, with a tokenizer built locally.

The point is one code path for every scale: `build_tiny_lm` writes a model directory with
`save_pretrained`, and `load_lm(path_or_id)` reads it back through `from_pretrained`, the
same call that loads `Qwen/Qwen2.5-0.5B` on a cluster. Nothing here touches the network:
the tokenizer is byte-level (every text encodes), optionally with BPE merges learned from
the task's own text.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import ClassVar, Iterable, Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)
from transformers.utils import logging as transformers_logging

from workloads.config import ConfigError, require

# Per-shard progress bars for a 3 MB model are noise in every worker's log.
transformers_logging.disable_progress_bar()

# ChatML as Qwen2 writes it (without Qwen's default system message).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclasses.dataclass(frozen=True)
class TokenizerStyle:
    special_tokens: tuple[str, ...]
    pad: str
    eos: str
    bos: str | None = None
    chat_template: str | None = None


TOKENIZER_STYLES = {
    "bytes": TokenizerStyle(("<pad>", "<s>", "</s>"), pad="<pad>", eos="</s>", bos="<s>"),
    "qwen2": TokenizerStyle(("<|endoftext|>", "<|im_start|>", "<|im_end|>"), pad="<|endoftext|>", eos="<|endoftext|>"),
    "qwen2-chat": TokenizerStyle(("<|endoftext|>", "<|im_start|>", "<|im_end|>"), pad="<|endoftext|>", eos="<|im_end|>",
                                 chat_template=CHATML_TEMPLATE),
}
PLAIN_TOKENIZER_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}
BYTE_ALPHABET_SIZE = 256


@dataclasses.dataclass
class TinyLMConfig:
    """Shape of the tiny default model (about 1M parameters at these defaults)."""

    family: Literal["qwen2", "llama"] = "qwen2"  # transformers architecture of the tiny model
    hidden_size: int = 128  # width of the residual stream
    num_layers: int = 4  # decoder layers
    num_heads: int = 4  # attention heads
    num_kv_heads: int = 2  # key/value heads (grouped-query attention)
    intermediate_size: int = 384  # MLP width
    max_positions: int = 256  # longest sequence in tokens
    # BPE merges learned on the task text on top of the 256 bytes; 0 = pure byte level,
    # which keeps every digit its own token (arithmetic is learned digit by digit).
    bpe_merges: int = 0
    # True: merges never cross a newline. A step-by-step writer's prompt always ends at a line
    # boundary, so a token spanning one would be trained on but never continued from.
    bpe_within_lines: bool = False
    # bytes (BOS <s>), qwen2 (no BOS) or qwen2-chat (no BOS, a ChatML chat template): see the module docstring
    tokenizer: Literal["bytes", "qwen2", "qwen2-chat"] = "bytes"

    section: ClassVar[str] = "model"

    def validate(self) -> None:
        require(self.hidden_size % self.num_heads == 0, "hidden_size", "must be divisible by num_heads")
        require(self.num_heads % self.num_kv_heads == 0, "num_kv_heads", "must divide num_heads")
        require(self.num_layers >= 1, "num_layers", "must be >= 1")
        require(self.bpe_merges >= 0, "bpe_merges", "must be >= 0")
        require(self.tokenizer in TOKENIZER_STYLES, "tokenizer", f"expected one of {sorted(TOKENIZER_STYLES)}")


def build_tokenizer(texts: Iterable[str] = (), bpe_merges: int = 0, style: str = "bytes",
                    within_lines: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of the given style; `bpe_merges` > 0 learns merges from `texts`,
    which with `within_lines` never join a newline to anything."""
    spec = TOKENIZER_STYLES[style]
    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Split("\n", behavior="isolated"), byte_level])
                               if within_lines else byte_level)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BYTE_ALPHABET_SIZE + len(spec.special_tokens) + bpe_merges,
        special_tokens=list(spec.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts) or [""], trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=spec.pad,
        bos_token=spec.bos,
        eos_token=spec.eos,
        padding_side="left",  # generation appends on the right
    )
    if spec.chat_template:
        wrapped.chat_template = spec.chat_template
    return wrapped


def model_config(cfg: TinyLMConfig, tokenizer: PreTrainedTokenizerFast):
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config_class = {"qwen2": Qwen2Config, "llama": LlamaConfig}[cfg.family]
    return config_class(**common)


def tiny_lm(cfg: TinyLMConfig, texts: Iterable[str] = (), seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Tokenizer + randomly initialised model in memory; the same seed gives the same weights."""
    tokenizer = build_tokenizer(texts, cfg.bpe_merges, cfg.tokenizer, cfg.bpe_within_lines)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(model_config(cfg, tokenizer)), tokenizer


def build_tiny_lm(cfg: TinyLMConfig, out_dir: str | Path, texts: Iterable[str] = (), seed: int = 0) -> Path:
    """Build tokenizer + randomly initialised model, save both to `out_dir`, return it."""
    out_dir = Path(out_dir)
    model, tokenizer = tiny_lm(cfg, texts, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def load_tokenizer(path_or_id: str | Path) -> PreTrainedTokenizerFast:
    """A saved tokenizer, exactly as saved.

    A locally built tokenizer is saved as a plain `tokenizers` backend; next to a Qwen2 or
    Llama config, `AutoTokenizer` would rebuild it as that family's tokenizer (another
    pre-tokenizer, an extra special token) and encode text differently. Saved plain
    tokenizers are therefore loaded as plain tokenizers; everything else goes through
    `AutoTokenizer`."""
    config_file = Path(str(path_or_id)).expanduser() / "tokenizer_config.json"
    if config_file.is_file():
        import json

        saved_class = json.loads(config_file.read_text()).get("tokenizer_class")
        if saved_class in PLAIN_TOKENIZER_CLASSES:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path_or_id))
            tokenizer.padding_side = "left"
            return tokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(path_or_id))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_lm(path_or_id: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Load model + tokenizer from a local directory or a hub id (`Qwen/...`)."""
    path_or_id = str(path_or_id)
    looks_local = path_or_id.startswith((".", "/", "~")) or os.path.exists(path_or_id)
    if looks_local and not (Path(path_or_id).expanduser() / "config.json").is_file():
        raise ConfigError(f"model {path_or_id}: no config.json there (not a saved model directory)")
    tokenizer = load_tokenizer(path_or_id)
    model = AutoModelForCausalLM.from_pretrained(path_or_id)
    return model, tokenizer


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
