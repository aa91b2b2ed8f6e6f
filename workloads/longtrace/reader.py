"""The LongTraceRL reader: how rows become prompts, SFT targets and scores (no Ray here).

A row is the public LongTraceRL format written by `pipelines.longtrace_data`. The reader sees
the user message (instruction, documents, question); models with a chat template get it
through the template, tiny models without one get the message followed by a response cue.

The SFT target of the embedded default walks the gold chain, so the rubric reward has
something to reward beyond the final answer:  "Raveri Lolo > Juquis > Feankaland. Answer: Feankaland".
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path
from typing import Sequence

from workloads.lm import format_prompt, greedy_complete, sample_groups
from workloads.longtrace.reward import answer_content, group_rewards, rubric_score

RESPONSE_CUE = "\nResponse: "


@dataclasses.dataclass
class ReaderExample:
    question_id: str
    prompt: str
    label: str
    rubrics: list[str]
    context_tokens: int
    question: str = ""

    @property
    def chain_target(self) -> str:
        return f"{' > '.join(self.rubrics)}. Answer: {self.label}"


def reader_prompt(tokenizer, messages: Sequence[dict]) -> str:
    return format_prompt(tokenizer, messages, plain_suffix=RESPONSE_CUE)


def load_examples(directory: str | Path, tokenizer) -> list[ReaderExample]:
    """Rows of one mode directory (`DIR/mode=tiered` or `DIR/mode=random`), in question order."""
    import pyarrow.dataset as ds

    path = str(directory)
    try:
        rows = ds.dataset(path, format="parquet").to_table().to_pylist()
    except (FileNotFoundError, OSError) as exc:
        raise FileNotFoundError(f"{path}: no LongTraceRL Parquet rows ({exc})") from None
    examples = []
    for row in rows:
        info = row["metadata"]["extra_reward_info"]
        examples.append(ReaderExample(row["metadata"]["question_id"], reader_prompt(tokenizer, row["input_messages"]),
                                      row["label"], list(info["rubrics"]), int(row["metadata"]["context_tokens"]),
                                      info["question"]))
    return sorted(examples, key=lambda e: e.question_id)


def chain_facts(chain: Sequence[str]) -> list[tuple[str, str]]:
    """The facts a question's chain walks through, as (head, tail) pairs."""
    return list(zip(chain, chain[1:]))


def is_held_out_fact(fact: tuple[str, str], fraction: float) -> bool:
    """A stable split of the knowledge graph's facts (the same in every mode and seed)."""
    return zlib.crc32("\t".join(fact).encode()) % 1000 < fraction * 1000


def is_held_out(example: "ReaderExample", held_out_facts: float) -> bool:
    """A question is held out when its chain uses a held-out fact. The reader's training
    targets walk the chains of the other questions, so none of them states a held-out fact:
    a held-out answer cannot come from a memorised training target, only from the context."""
    return any(is_held_out_fact(fact, held_out_facts) for fact in chain_facts(example.rubrics))


def is_validation(example: "ReaderExample", share: float) -> bool:
    """Which held-out questions select checkpoints (validation) rather than report (test): a
    stable split by question, the same in both modes."""
    return zlib.crc32(f"validation-{example.question_id}".encode()) % 1000 < share * 1000


def closed_book(example: "ReaderExample", tokenizer) -> "ReaderExample":
    """The same question with no documents: what the reader knows without reading."""
    from workloads.longtrace.search import context_content

    prompt = reader_prompt(tokenizer, [{"role": "user", "content": context_content(example.question, [])}])
    return dataclasses.replace(example, prompt=prompt, context_tokens=0)


def score_responses(responses: Sequence[str], examples: Sequence[ReaderExample], judge: str = "exact") -> dict[str, float]:
    """Evaluation scores (eta = 0): accuracy = mean outcome, plus mean rubric recall and the malformed share."""
    accuracy = [group_rewards([r], e.label, e.rubrics, eta=0.0, judge=judge)[0] for r, e in zip(responses, examples)]
    contents = [answer_content(r) for r in responses]
    recall = [rubric_score(c, e.rubrics) if c is not None else 0.0 for c, e in zip(contents, examples)]
    n = max(1, len(examples))
    return {"accuracy": sum(accuracy) / n, "rubric_recall": sum(recall) / n,
            "malformed": sum(c is None for c in contents) / n,
            "answered": sum(c is not None and "Answer:" in c for c in contents) / n}




def greedy_scores(model, tokenizer, examples: Sequence[ReaderExample], max_new_tokens: int,
                  judge: str = "exact") -> tuple[dict[str, float], list[str]]:
    responses = greedy_complete(model, tokenizer, [e.prompt for e in examples], max_new_tokens, batch_size=32)
    return score_responses(responses, examples, judge), responses


def sampled_accuracy(model, tokenizer, examples: Sequence[ReaderExample], samples: int, max_new_tokens: int,
                     temperature: float, seed: int, judge: str = "exact", chunk: int = 8) -> float:
    """Mean accuracy of `samples` sampled responses per example: what the policy does, not its mode."""
    correct = 0.0
    for start in range(0, len(examples), chunk):
        batch = list(examples[start : start + chunk])
        rollouts = sample_groups(model, tokenizer, [e.prompt for e in batch], samples, max_new_tokens, temperature,
                                 generator_seed=seed + start)
        repeated = [e for e in batch for _ in range(samples)]
        texts = ["" if cut else text for text, cut in zip(rollouts.texts, rollouts.truncated)]
        correct += score_responses(texts, repeated, judge)["accuracy"] * len(repeated)
    return correct / max(1, len(examples) * samples)
