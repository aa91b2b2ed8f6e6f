"""DistIL's DAgger step in plain torch: the student's rollouts become states for the expert,
the expert's labels become the loss, and Pass@k measures the student.

    states = states_from_rollouts(rollouts, privileged)       # what the student visited
    labels = expert.label(states)                              # top-k + tail at every position
    loss = distillation_loss(model, rollouts, labels, "distil") # -sum_a sg(p_E(a|s)) log pi(a|s)

Because the states are the student's own prefixes, the expert corrects the student where
the student actually goes (DAgger), not only along the expert's own path.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np
import torch

from workloads.distill import (
    CandidateSet,
    TopKDistribution,
    candidate_cross_entropy,
    disagreement,
    per_state_objective,
    score_function_term,
    student_bucket_logprobs,
)
from workloads.experts import ExpertLabels, StepCandidates, StudentState, ends_step
from workloads.lm import Rollouts, completion_logits, continuation_logprobs, pad, zero_loss


def states_from_rollouts(rollouts: Rollouts, privileged: Sequence[str]) -> list[StudentState]:
    """One state per rollout row: its unpadded prompt ids and its completion up to and including eos."""
    start = rollouts.prompt_length
    states = []
    for row in range(rollouts.input_ids.shape[0]):
        prompt = rollouts.input_ids[row, :start][rollouts.attention_mask[row, :start].bool()]
        completion = rollouts.input_ids[row, start:][rollouts.completion_mask[row].bool()]
        states.append(StudentState(tuple(prompt.tolist()), tuple(completion.tolist()), privileged[row]))
    return states


def step_states(states: Sequence[StudentState], tokenizer) -> list[StudentState]:
    """Step level: every state where a student step begins, i.e. the completion cut after each
    step end (a line break or eos) it contains, starting with the empty completion."""
    out = []
    for state in states:
        cuts = [0] + [j + 1 for j, token in enumerate(state.completion_ids[:-1]) if ends_step(token, tokenizer)]
        out.extend(StudentState(state.prompt_ids, state.completion_ids[:cut], state.privileged) for cut in cuts)
    return out


def step_candidate_loss(model, states: Sequence[StudentState], candidates: Sequence[StepCandidates],
                        pad_id: int) -> tuple[torch.Tensor, int]:
    """(loss, labelled states): forward CE over each state's K candidates, -sum_i p_E(c_i) log pi(c_i | s),
    p_E renormalised over the candidates (`workloads.distill.candidate_cross_entropy`). No candidate
    anywhere: a zero loss with the whole model in its graph (see `workloads.distributed`)."""
    kept = [(state, answer) for state, answer in zip(states, candidates) if answer.token_ids]
    if not kept:
        first = states[0] if states else None
        ids, mask = pad([list(first.prompt_ids + first.completion_ids) if first else [pad_id]], pad_id)
        return zero_loss(model, ids, mask), 0
    contexts = [state.prompt_ids + state.completion_ids for state, answer in kept for _ in answer.token_ids]
    steps = [step for _, answer in kept for step in answer.token_ids]
    flat = continuation_logprobs(model, contexts, steps, pad_id)
    device = flat.device
    counts = [len(answer.token_ids) for _, answer in kept]
    rows = torch.repeat_interleave(torch.arange(len(kept)), torch.tensor(counts)).to(device)
    columns = torch.cat([torch.arange(count) for count in counts]).to(device)
    student = torch.zeros(len(kept), max(counts), device=device).index_put((rows, columns), flat)  # [N, K], 0 where none
    expert = torch.full((len(kept), max(counts)), -math.inf, device=device)  # probability 0 where no candidate
    expert[rows, columns] = torch.from_numpy(np.concatenate([answer.logprobs for _, answer in kept])).to(device)
    return candidate_cross_entropy(student, CandidateSet(expert)), len(kept)


def distillation_loss(model, rollouts: Rollouts, labels: Sequence[ExpertLabels], objective: str, beta: float = 0.5,
                      average: Literal["token", "sequence"] = "token",
                      credit: Literal["state", "sequence"] = "state") -> tuple[torch.Tensor, int]:
    """(loss, number of labelled states). `token`: the sum over labelled states divided by their
    number; `sequence`: each rollout's sum over its states, averaged over rollouts. `credit=sequence`
    adds to each rollout's sum the score-function term of its expected forward CE
    (`workloads.distill.score_function_term`, the expert-student disagreement at later states
    credited to the decisions before them); `state` is the per-state term only. No labelled
    state: (0, 0)."""
    logits = completion_logits(model, rollouts.input_ids, rollouts.attention_mask, rollouts.prompt_length)
    rows, columns, ids, logprobs = [], [], [], []
    for row, label in enumerate(labels):
        length = int(rollouts.completion_mask[row].sum())
        if len(label.valid) != length:
            raise ValueError(f"expert labels for rollout {row}: {len(label.valid)} positions, the completion has {length}")
        for column in range(length):
            if label.valid[column]:
                rows.append(row)
                columns.append(column)
        ids.append(torch.from_numpy(label.token_ids[label.valid]))
        logprobs.append(torch.from_numpy(label.logprobs[label.valid]))
    if not rows:  # nothing labelled: a zero loss that still reaches every parameter
        return logits.sum() * 0.0, 0
    device = logits.device
    rows_t, columns_t = torch.tensor(rows, device=device), torch.tensor(columns, device=device)
    expert = TopKDistribution(torch.cat(ids).to(device), torch.cat(logprobs).to(device))
    state_logits = logits[rows_t, columns_t]
    per_sequence = torch.zeros(len(labels), device=device).index_add(
        0, rows_t, per_state_objective(objective, state_logits, expert, beta))
    if credit == "sequence":
        if objective != "distil":
            raise ValueError(f"credit=sequence is the forward CE's sequence-level gradient; objective {objective!r} has none here")
        costs = torch.zeros(logits.shape[:2], device=device)
        costs[rows_t, columns_t] = disagreement(student_bucket_logprobs(state_logits, expert.token_ids), expert.bucket_probs())
        labelled = torch.zeros(logits.shape[:2], dtype=torch.bool, device=device)
        labelled[rows_t, columns_t] = True
        alive = rollouts.completion_mask.bool().to(device)
        completion = rollouts.input_ids[:, rollouts.prompt_length:].to(device)
        chosen = torch.log_softmax(logits, dim=-1).gather(-1, completion[..., None]).squeeze(-1)
        per_sequence = per_sequence + score_function_term(chosen * alive, costs, labelled, alive)
    elif credit != "state":
        raise ValueError(f"credit: expected state or sequence, got {credit!r}")
    if average == "token":
        return per_sequence.sum() / len(rows), len(rows)
    return per_sequence[rows_t.unique()].mean(), len(rows)


def label_statistics(labels: Sequence[ExpertLabels] | Sequence[StepCandidates]) -> dict[str, float]:
    """How spread the expert's labels are on the states the student visited: mean entropy (nats)
    and mean top-1 mass over labelled positions (an expert that is a point mass in practice has
    entropy 0 and top-1 mass 1). Token level: over the k + 1 buckets (the tail is one bucket, so
    the entropy is a lower bound of the full distribution's); step level: over the K candidates,
    renormalised as the loss does. Abstentions are left out; no labelled state: {}."""
    rows = []
    for label in labels:
        if isinstance(label, StepCandidates):
            if len(label.token_ids):
                scores = np.asarray(label.logprobs, np.float64)
                rows.append(np.exp(scores - np.logaddexp.reduce(scores))[None])
            continue
        if label.valid.any():
            top = np.exp(np.asarray(label.logprobs, np.float64)[label.valid])
            rows.append(np.concatenate([top, np.clip(1.0 - top.sum(axis=1, keepdims=True), 0.0, None)], axis=1))
    if not rows:
        return {}
    entropy = [float(-(p[p > 0] * np.log(p[p > 0])).sum()) for block in rows for p in block]
    top1 = [float(p.max()) for block in rows for p in block]
    return {"expert_entropy": float(np.mean(entropy)), "expert_top1_mass": float(np.mean(top1))}


def pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples is correct) from n samples, `correct` right:
    1 - C(n - c, k) / C(n, k)."""
    if not 1 <= k <= n:
        raise ValueError(f"pass@k: need 1 <= k <= n, got k={k}, n={n}")
    if n - correct < k:
        return 1.0
    return 1.0 - math.comb(n - correct, k) / math.comb(n, k)
