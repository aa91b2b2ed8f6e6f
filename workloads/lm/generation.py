"""Generation: groups of sampled completions (GRPO, DistIL rollouts, Pass@k), greedy
completions (evaluation, the Serve app) and raw continuations of token ids (the OpenAI route).

Prompts are text already formatted (`workloads.lm.format_prompt`) or token ids; every batch is
left-padded on the model's device; sampling is pure (no top-k / top-p) unless greedy.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator, Sequence

import torch

from workloads.lm.tokens import device_of, encode_text, pad


@dataclasses.dataclass
class Rollouts:
    """G completions for each of P prompts, rows grouped by prompt (row = prompt * G + j)."""

    input_ids: torch.Tensor  # [P*G, prompt + T]: left-padded prompt, then the completion
    attention_mask: torch.Tensor  # [P*G, prompt + T]
    completion_mask: torch.Tensor  # [P*G, T]: completion tokens up to and including eos
    texts: list[str]
    truncated: list[bool]  # no eos within max_new_tokens

    @property
    def prompt_length(self) -> int:
        return self.input_ids.shape[1] - self.completion_mask.shape[1]

    def select(self, rows: torch.Tensor) -> "Rollouts":
        keep = rows.nonzero().flatten().tolist() if rows.dtype == torch.bool else rows.tolist()
        return Rollouts(self.input_ids[rows], self.attention_mask[rows], self.completion_mask[rows],
                        [self.texts[i] for i in keep], [self.truncated[i] for i in keep])


@torch.no_grad()
def generate_ids(model, tokenizer, sequences: Sequence[Sequence[int]], max_new_tokens: int, temperature: float,
                 num_return_sequences: int = 1, seed: int | None = None,
                 stop_strings: Sequence[str] = (), synced: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(left-padded prompt ids, their mask, generated ids [B * n, at most max_new_tokens], padded
    after eos; as long as the longest completion), on the CPU; greedy at temperature 0; a sequence also ends after any of `stop_strings`.
    `synced`: every rank generates together (a sharded model's forwards are collectives, so a
    rank that finished keeps stepping until all have: Hugging Face's `synced_gpus`)."""
    model.eval()
    ids, mask = pad(sequences, tokenizer.pad_token_id, side="left")
    if seed is not None:
        torch.manual_seed(seed)
    sampling = (dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0
                else dict(do_sample=False))
    if stop_strings:
        sampling.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
    device = device_of(model)
    generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                               num_return_sequences=num_return_sequences, pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=tokenizer.eos_token_id, synced_gpus=synced, **sampling)
    return ids, mask, generated[:, ids.shape[1] :].cpu()


def completion_mask(completion: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 on completion tokens up to and including the first eos, 0 after it."""
    is_eos = completion == eos_token_id
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return (~after_eos).long()


def sample_groups(model, tokenizer, prompts: Sequence[str], group_size: int, max_new_tokens: int,
                  temperature: float = 1.0, generator_seed: int | None = None, synced: bool = False) -> Rollouts:
    """Sample `group_size` completions per formatted prompt (`synced`: see `generate_ids`)."""
    ids, mask, completion = generate_ids(model, tokenizer, [encode_text(tokenizer, p) for p in prompts], max_new_tokens,
                                         temperature, group_size, generator_seed, synced=synced)
    kept = completion_mask(completion, tokenizer.eos_token_id)
    truncated = (~(completion == tokenizer.eos_token_id).any(dim=1)).tolist()
    attention_mask = torch.cat([mask.repeat_interleave(group_size, dim=0), kept], dim=1)
    input_ids = torch.cat([ids.repeat_interleave(group_size, dim=0), completion], dim=1)
    texts = tokenizer.batch_decode(completion * kept + tokenizer.pad_token_id * (1 - kept), skip_special_tokens=True)
    return Rollouts(input_ids, attention_mask, kept, texts, truncated)


def greedy_complete(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 100,
                    max_prompt_tokens: int = 0) -> list[str]:
    """Greedy continuations of formatted prompts, decoded without special tokens; with
    `max_prompt_tokens`, each prompt keeps only its last tokens (`encode_text`)."""
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [encode_text(tokenizer, p, max_prompt_tokens) for p in prompts[start : start + batch_size]]
        _, _, completion = generate_ids(model, tokenizer, chunk, max_new_tokens, temperature=0.0)
        kept = completion_mask(completion, tokenizer.eos_token_id)
        outputs.extend(tokenizer.batch_decode(completion * kept + tokenizer.pad_token_id * (1 - kept), skip_special_tokens=True))
    return outputs


def complete_counted(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, temperature: float = 0.0,
                     seed: int | None = None) -> tuple[list[str], list[int], list[int]]:
    """(completions, generated tokens each (eos included), prompt tokens each) of formatted
    prompts, greedy at temperature 0: what a loop that budgets its tokens reads."""
    sequences = [encode_text(tokenizer, p) for p in prompts]
    _, _, completion = generate_ids(model, tokenizer, sequences, max_new_tokens, temperature, seed=seed)
    kept = completion_mask(completion, tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(completion * kept + tokenizer.pad_token_id * (1 - kept), skip_special_tokens=True)
    return texts, kept.sum(dim=1).tolist(), [len(s) for s in sequences]


@torch.no_grad()
def stream_tokens(model, sequence: Sequence[int], max_new_tokens: int, temperature: float,
                  seed: int | None = None) -> Iterator[int]:
    """Token ids one at a time as they are generated (KV cache, one sequence): what streaming
    responses and streaming agents read; greedy at temperature 0. The caller stops at eos."""
    model.eval()
    device = device_of(model)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed) if seed is not None else generator.seed()
    # transformers 5 names the cache argument `cache`, 4.x `past_key_values`
    cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    inputs, cache = torch.tensor([list(sequence)], device=device), None
    for _ in range(max_new_tokens):
        out = model(input_ids=inputs, use_cache=True, **({cache_argument: cache} if cache is not None else {}))
        cache = out.get("cache", out.get("past_key_values"))
        logits = out.logits[0, -1].float()
        if temperature > 0:
            token = int(torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator))
        else:
            token = int(logits.argmax())
        yield token
        inputs = torch.tensor([[token]], device=device)
