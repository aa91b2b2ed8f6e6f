"""The PSM infilling layout (TRI): a question, a verified premise P, a verified later milestone
S, then the bridge M that leads from P to S, each part opened by its own sentinel token:

    <question><|premise|>P<|milestone|>S<|bridge|>M<eos>

The three sentinels are added to the tokenizer as special tokens (so no text can spell them)
and the model's embeddings are resized to match. The loss is on M and eos only.
"""

from __future__ import annotations

from collections.abc import Sequence

PREMISE, MILESTONE, BRIDGE = "<|premise|>", "<|milestone|>", "<|bridge|>"
SENTINELS = (PREMISE, MILESTONE, BRIDGE)


def add_infilling_tokens(model, tokenizer) -> list[int]:
    """Add the sentinels to `tokenizer` (once) and resize `model`'s embeddings; their ids."""
    missing = [token for token in SENTINELS if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    if model is not None and model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return tokenizer.convert_tokens_to_ids(list(SENTINELS))


def infilling_prompt(question: str, premise: str, milestone: str) -> str:
    """Everything before the bridge; `premise` may be empty (the first step failed)."""
    return f"{question}{PREMISE}{premise}{MILESTONE}{milestone}{BRIDGE}"


def tokenize_infilling(tokenizer, questions: Sequence[str], premises: Sequence[str], milestones: Sequence[str],
                       bridges: Sequence[str], max_length: int = 0):
    """Training rows of the layout, loss on the bridge and eos only (`workloads.sft.tokenize_examples`)."""
    from workloads.sft import tokenize_examples

    if any(token not in tokenizer.get_vocab() for token in SENTINELS):
        raise ValueError("the tokenizer has no infilling sentinels: call add_infilling_tokens(model, tokenizer) first")
    prompts = [infilling_prompt(q, p, s) for q, p, s in zip(questions, premises, milestones)]
    return tokenize_examples(tokenizer, prompts, list(bridges), max_length)
