"""The LongTraceRL rubric reward, as the public code computes it.

    norm(s)      lowercase, strip, keep only [a-zA-Z0-9_]+ words and CJK characters (each
                 CJK character its own token), joined by single spaces
    content      the text after the last closing think tag (the whole response without one);
                 a response that opens a think block and never closes it was truncated
    answer       the text after the last `Answer:` marker of the content, matched in any case
                 (the whole content without one)
    r_rub        #rubrics e with a non-empty norm(e) that is a substring of norm(content) / #rubrics;
                 0 if none (a rubric that normalises to "" is in every text, so it never counts)
    r_out        judge(answer, label) in {0, 1}: exact (norm equality) or token F1 >= threshold
    r~_rub_i     r_rub_i / max_j r_rub_j over the whole group (wrong answers included) if > 0
    r_i          0 if r_out_i = 0, else (1 - eta) * r_out_i + eta * r~_rub_i
    A_i          (r_i - mean) / (std + 1e-6) within the group (population std)

Truncated or malformed responses (unclosed think block, empty content) score 0 and count as
r_rub = 0 in the group maximum. Evaluation uses eta = 0.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Callable, Sequence

_TOKEN = re.compile(r"[a-zA-Z0-9_]+|[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_MARKER = "Answer:"
_ANSWER_MARKER = re.compile(re.escape(ANSWER_MARKER), re.IGNORECASE)
F1_THRESHOLD = 0.8


def norm(text: str) -> str:
    return " ".join(_TOKEN.findall(text.lower().strip()))


def answer_content(response: str) -> str | None:
    """What is scored: the text after the last closing think tag; None when malformed."""
    if THINK_CLOSE in response:
        content = response.rsplit(THINK_CLOSE, 1)[1]
    elif THINK_OPEN in response:
        return None  # the reasoning never finished: truncated
    else:
        content = response
    return content if content.strip() else None


def final_answer(content: str) -> str:
    """The text after the last `Answer:` marker in any case (`answer:`, `ANSWER:`), else all of it."""
    return _ANSWER_MARKER.split(content)[-1]


def rubric_score(content: str, rubrics: Sequence[str]) -> float:
    """Fraction of rubrics whose normalised text occurs in the normalised content (substring, no word boundaries)."""
    if not rubrics:
        return 0.0
    haystack = norm(content)
    return sum(1 for rubric in rubrics if norm(rubric) and norm(rubric) in haystack) / len(rubrics)


def exact_judge(answer: str, label: str) -> float:
    return float(norm(answer) == norm(label) and norm(label) != "")


def f1_judge(answer: str, label: str, threshold: float = F1_THRESHOLD) -> float:
    predicted, gold = norm(answer).split(), norm(label).split()
    common = sum((Counter(predicted) & Counter(gold)).values())
    if not predicted or not gold or common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return float(2 * precision * recall / (precision + recall) >= threshold)


Judge = Callable[[str, str], float]
JUDGES: dict[str, Judge] = {"exact": exact_judge, "f1": f1_judge}


def llm_judge(endpoint: str, model: str, timeout_s: float = 30.0, retries: int = 2, api_key: str = "") -> Judge:
    """An LLM judge behind an OpenAI-compatible completions endpoint: 1 when it replies yes."""
    from workloads.endpoints import post_completion

    def judge(answer: str, label: str) -> float:
        prompt = (f"Reference answer: {label}\nCandidate answer: {answer.strip()}\n"
                  "Does the candidate name the same thing as the reference? Reply yes or no.\nReply:")
        body = {"model": model, "prompt": prompt, "max_tokens": 3, "temperature": 0.0}
        return float(post_completion(endpoint, body, timeout_s, retries, api_key)["text"].strip().lower().startswith("yes"))

    return judge


def group_rewards(responses: list[str], label: str, rubrics: list[str], eta: float = 0.3, judge: str | Judge = "exact",
                  truncated: Sequence[bool] | None = None) -> list[float]:
    """Positive-only rubric-shaped rewards for one group of responses to one prompt.

    `judge` is a built-in judge's name or any `(answer, label) -> {0, 1}` callable (e.g.
    `llm_judge(...)`); `truncated[i]` marks a response cut off by the length limit (scored 0,
    like a malformed one)."""
    if not callable(judge) and judge not in JUDGES:
        raise ValueError(f"judge: expected one of {sorted(JUDGES)}, got {judge!r}")
    judge_fn = judge if callable(judge) else JUDGES[judge]
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta: expected a value in [0, 1], got {eta}")
    contents = [answer_content(response) for response in responses]
    if truncated is not None:
        contents = [None if cut else c for c, cut in zip(contents, truncated, strict=True)]
    rubric = [rubric_score(c, rubrics) if c is not None else 0.0 for c in contents]
    outcome = [judge_fn(final_answer(c), label) if c is not None else 0.0 for c in contents]
    best = max(rubric, default=0.0)
    shaped = [r / best if best > 0 else 0.0 for r in rubric]
    return [0.0 if out == 0 else (1 - eta) * out + eta * s for out, s in zip(outcome, shaped)]


def grpo_advantages(rewards: Sequence[float], eps: float = 1e-6) -> list[float]:
    """Group-normalised advantages (population standard deviation)."""
    if not rewards:
        return []
    mean = sum(rewards) / len(rewards)
    std = (sum((r - mean) ** 2 for r in rewards) / len(rewards)) ** 0.5
    return [(r - mean) / (std + eps) for r in rewards]
