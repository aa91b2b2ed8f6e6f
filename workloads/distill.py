"""The distillation core shared by DistIL (LLM) and HANDOFF (humanoid): expert distributions
over the actions available at student-visited states, and the objectives that pull the
student toward them.

Distributions
- `TopKDistribution`: an expert's top-k next tokens with log-probs, plus a tail bucket that
  holds the remaining mass 1 - sum(top-k). The student is scored on the same k + 1 outcomes:
  its top-k token probabilities and the mass it puts on every other token.
- `CandidateSet`: K candidate next steps with the expert's sequence log-probs, renormalised
  over the K (step-level distillation).
- `DiagonalGaussian`: continuous actions (robot pipelines).

Objectives (one interface, `token_objective(name, student_logits, expert)`), all averaged over
visited states, the expert side always detached:
- `distil`: forward cross-entropy  -sum_a p_E(a) log pi(a)
- `reverse_kl`: KL(pi || p_E)
- `jsd`: generalised Jensen-Shannon, beta KL(p_E || M) + (1 - beta) KL(pi || M), M = beta p_E + (1 - beta) pi
RLVR (GRPO with a 0/1 verifier reward) lives in `workloads.grpo`.

Credit over the student's rollouts (`score_function_term`): the expected forward CE over the
states a rollout visits, E_tau~pi [sum_t CE_t], has two gradient terms: the per-state one
above, and a score-function one, sum_t (later disagreement) * grad log pi(a_t | s_t), which
carries the expert-student disagreement at later states back to the decision that led there.
The per-state form alone (the humanoid pipeline's) treats the visited states as given.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

LOG_EPS = 1e-12


@dataclasses.dataclass
class TopKDistribution:
    token_ids: torch.Tensor  # [N, k] long
    logprobs: torch.Tensor  # [N, k] the expert's log-probs of those tokens

    def bucket_probs(self) -> torch.Tensor:
        """[N, k + 1]: the top-k probabilities and the tail bucket's remaining mass."""
        top = self.logprobs.exp()
        tail = (1.0 - top.sum(dim=-1, keepdim=True)).clamp_min(0.0)
        return torch.cat([top, tail], dim=-1).detach()


def student_bucket_logprobs(student_logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """[N, k + 1]: the student's log-probs of the expert's top-k tokens and of everything else."""
    logprobs = F.log_softmax(student_logits.float(), dim=-1)
    top = logprobs.gather(-1, token_ids)
    mask = torch.ones_like(logprobs, dtype=torch.bool).scatter_(-1, token_ids, False)
    tail = torch.logsumexp(logprobs.masked_fill(~mask, -math.inf), dim=-1, keepdim=True)
    return torch.cat([top, tail], dim=-1)


def disagreement(student: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
    """KL(p_E || pi) over buckets, detached: forward CE minus the expert's own entropy, so a state
    where the student already matches the expert costs 0 however uncertain the expert is."""
    finite_expert = torch.where(expert > 0, expert.clamp_min(LOG_EPS).log(), torch.zeros_like(expert))
    return (forward_cross_entropy(student, expert) + (expert * finite_expert).sum(dim=-1)).detach()


def score_function_term(chosen_logprobs: torch.Tensor, costs: torch.Tensor, labelled: torch.Tensor,
                        alive: torch.Tensor) -> torch.Tensor:
    """[R]: per rollout, sum_t sg(A_t) log pi(a_t | s_t), A_t = C_t - b_t, where C_t is the summed
    `costs` at the rollout's later states (t' > t: what decision t led to) and b_t the mean C_t of
    the other rollouts at the same position (leave-one-out, so the estimate stays unbiased).
    All tensors are [R, T]; `alive` marks the rollout's decisions, `labelled` the states with a
    cost. Where a later state has no label (an expert that abstained), C_t is unknown and
    decision t gets no credit rather than a wrong one. Minimising the term moves probability
    toward decisions whose consequences the expert agrees with."""
    costs = torch.where(labelled, costs.detach(), torch.zeros_like(costs))
    later = costs.flip(-1).cumsum(-1).flip(-1) - costs
    unlabelled = (alive & ~labelled).int()
    known = alive & ((unlabelled.flip(-1).cumsum(-1).flip(-1) - unlabelled) == 0)
    count = known.sum(0, keepdim=True)
    others = ((later * known).sum(0, keepdim=True) - later) / (count - 1).clamp_min(1)
    advantage = torch.where(known & (count > 1), later - others, torch.zeros_like(later))
    return (advantage.detach() * chosen_logprobs).sum(-1)


def forward_cross_entropy(student: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
    """-sum p_E log pi over buckets ([N, B] log-probs of the student, probs of the expert)."""
    finite = torch.where(expert > 0, student, torch.zeros_like(student))  # 0 * -inf would be nan
    return -(expert * finite).sum(dim=-1)


def reverse_kl(student: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
    pi = student.exp()
    return (pi * (student - expert.clamp_min(LOG_EPS).log())).sum(dim=-1)


def generalised_jsd(student: torch.Tensor, expert: torch.Tensor, beta: float) -> torch.Tensor:
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd beta: expected a value in (0, 1), got {beta}")
    pi = student.exp()
    mixture_log = (beta * expert + (1 - beta) * pi).clamp_min(LOG_EPS).log()
    kl_expert = (expert * (expert.clamp_min(LOG_EPS).log() - mixture_log)).sum(dim=-1)
    kl_student = (pi * (student - mixture_log)).sum(dim=-1)
    return beta * kl_expert + (1 - beta) * kl_student


OBJECTIVES = ("distil", "reverse_kl", "jsd")


OBJECTIVE_FUNCTIONS = {
    "distil": lambda student, target, beta: forward_cross_entropy(student, target),
    "reverse_kl": lambda student, target, beta: reverse_kl(student, target),
    "jsd": generalised_jsd,
}


def per_state_objective(name: str, student_logits: torch.Tensor, expert: TopKDistribution, beta: float = 0.5) -> torch.Tensor:
    """[N]: the named objective at each visited state, on the expert's k + 1 buckets."""
    if name not in OBJECTIVE_FUNCTIONS:
        raise ValueError(f"objective: expected one of {OBJECTIVES}, got {name!r}")
    student = student_bucket_logprobs(student_logits, expert.token_ids)
    return OBJECTIVE_FUNCTIONS[name](student, expert.bucket_probs(), beta)


def token_objective(name: str, student_logits: torch.Tensor, expert: TopKDistribution, beta: float = 0.5) -> torch.Tensor:
    """Mean over visited states of the named objective."""
    return per_state_objective(name, student_logits, expert, beta).mean()


@dataclasses.dataclass
class CandidateSet:
    """K candidate next steps per state with the expert's sequence log-probs."""

    expert_logprobs: torch.Tensor  # [N, K]

    def probs(self) -> torch.Tensor:
        return F.softmax(self.expert_logprobs.float(), dim=-1).detach()  # renormalised over the K


def candidate_cross_entropy(student_seq_logprobs: torch.Tensor, candidates: CandidateSet) -> torch.Tensor:
    """-sum_i p_E(c_i) log pi(c_i): the student's (unnormalised) sequence log-probs of each candidate."""
    return -(candidates.probs() * student_seq_logprobs).sum(dim=-1).mean()


@dataclasses.dataclass
class DiagonalGaussian:
    mean: torch.Tensor  # [N, D]
    log_std: torch.Tensor  # [N, D]

    def kl_to(self, other: "DiagonalGaussian") -> torch.Tensor:
        """KL(self || other) per state, summed over action dimensions."""
        var_ratio = (2 * (self.log_std - other.log_std)).exp()
        mean_term = ((self.mean - other.mean) / other.log_std.exp()).pow(2)
        return 0.5 * (var_ratio + mean_term - 1 - 2 * (self.log_std - other.log_std)).sum(dim=-1)


def gaussian_distillation_loss(teacher: DiagonalGaussian, student: DiagonalGaussian) -> torch.Tensor:
    """KL(teacher || student) averaged over states, the teacher detached (HANDOFF)."""
    fixed = DiagonalGaussian(teacher.mean.detach(), teacher.log_std.detach())
    return fixed.kl_to(student).mean()
