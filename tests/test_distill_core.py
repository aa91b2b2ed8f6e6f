"""The distillation core: exact gradients, the tail bucket, and the paper's point on a bandit."""

import math

import pytest
import torch
import torch.nn.functional as F

from workloads.distill import (
    CandidateSet, DiagonalGaussian, TopKDistribution, candidate_cross_entropy, disagreement, gaussian_distillation_loss,
    per_state_objective, score_function_term, student_bucket_logprobs, token_objective,
)


def full_expert(probs: torch.Tensor) -> TopKDistribution:
    """Every token in the top-k: no tail."""
    n, vocab = probs.shape
    return TopKDistribution(torch.arange(vocab).expand(n, vocab).clone(), probs.log())


def test_forward_ce_gradient_is_softmax_minus_expert():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, requires_grad=True)
    expert = F.softmax(torch.randn(3, 5), dim=-1)
    loss = token_objective("distil", logits, full_expert(expert)) * 3  # undo the mean over states
    loss.backward()
    assert torch.allclose(logits.grad, F.softmax(logits, dim=-1).detach() - expert, atol=1e-6)


def test_tail_bucket_holds_the_remaining_mass():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.2, 0.1]]))
    expert = TopKDistribution(torch.tensor([[0, 1]]), torch.log(torch.tensor([[0.6, 0.1]])))
    assert torch.allclose(expert.bucket_probs(), torch.tensor([[0.6, 0.1, 0.3]]))
    student = student_bucket_logprobs(logits, expert.token_ids).exp()
    assert torch.allclose(student, torch.tensor([[0.5, 0.2, 0.3]]), atol=1e-6)
    expected = -(0.6 * math.log(0.5) + 0.1 * math.log(0.2) + 0.3 * math.log(0.3))
    assert token_objective("distil", logits, expert).item() == pytest.approx(expected, rel=1e-5)
    # reverse KL and JSD are zero only when the buckets agree
    same = TopKDistribution(torch.tensor([[0, 1]]), torch.log(torch.tensor([[0.5, 0.2]])))
    assert token_objective("reverse_kl", logits, same).item() == pytest.approx(0.0, abs=1e-6)
    assert token_objective("jsd", logits, same, beta=0.3).item() == pytest.approx(0.0, abs=1e-6)
    assert token_objective("jsd", logits, expert, beta=0.3).item() > 0
    with pytest.raises(ValueError, match="objective"):
        token_objective("kl", logits, expert)


def bandit_step(objective: str, lr: float = 0.05):
    """One gradient step on a 3-armed bandit; arms 0 and 2 pay 1, arm 1 pays 0.

    The expert almost always pulls arm 0 and practically never arm 2; the student mostly pulls
    the bad arm 1 and sometimes arm 2. Reverse KL is zero-forcing: its gradient is dominated
    by arm 2, where the expert has ~no mass, and shifts that mass mostly onto arm 1.
    """
    reward = torch.tensor([1.0, 0.0, 1.0])
    expert = full_expert(torch.tensor([[0.959, 0.040, 0.001]]))
    logits = torch.log(torch.tensor([[0.04, 0.71, 0.25]])).requires_grad_(True)
    token_objective(objective, logits, expert).backward()
    before = F.softmax(logits, dim=-1).detach()[0]
    after = F.softmax(logits - lr * logits.grad, dim=-1).detach()[0]
    return before, after, (before * reward).sum().item(), (after * reward).sum().item()


def test_reverse_kl_moves_mass_onto_the_worse_arm_while_forward_ce_improves():
    before, after, value_before, value_after = bandit_step("reverse_kl")
    assert after[1] > before[1] and value_after < value_before  # mode-seeking: worse
    before, after, value_before, value_after = bandit_step("distil")
    assert after[1] < before[1] and value_after > value_before  # mass-covering: better


def test_candidate_sets_and_gaussians():
    candidates = CandidateSet(torch.tensor([[math.log(3.0), 0.0]]))  # renormalised to 0.75 / 0.25
    student = torch.tensor([[-1.0, -2.0]])
    assert candidate_cross_entropy(student, candidates).item() == pytest.approx(0.75 * 1.0 + 0.25 * 2.0)
    teacher = DiagonalGaussian(torch.zeros(1, 2), torch.zeros(1, 2))
    student_gauss = DiagonalGaussian(torch.tensor([[1.0, 0.0]], requires_grad=True), torch.zeros(1, 2))
    assert gaussian_distillation_loss(teacher, student_gauss).item() == pytest.approx(0.5)
    assert gaussian_distillation_loss(teacher, teacher).item() == pytest.approx(0.0)


def test_on_a_bandit_reverse_kl_and_jsd_raise_a_worse_action_and_forward_ce_does_not():
    """DistIL's contrast on a 3-armed bandit with a tabular policy and the project's own objectives:
    the expert (top-2 tokens + tail bucket) puts almost no mass on arm 1, little on arm 2 (the
    worst), most on arm 0 (the best). One SGD step of each objective from the same student:
    the mode-seeking objectives move mass off arm 1 and onto the worst arm; forward CE moves it
    towards the expert and raises the expected reward."""
    rewards = torch.tensor([1.0, 0.3, 0.0])
    student = torch.tensor([0.05, 0.5, 0.45])
    expert = TopKDistribution(token_ids=torch.tensor([[0, 2]]), logprobs=torch.tensor([[0.94, 0.059]]).log())
    after = {}
    for objective in ("distil", "reverse_kl", "jsd"):
        theta = torch.nn.Parameter(student.log().clone()[None])
        optimizer = torch.optim.SGD([theta], lr=0.5)
        per_state_objective(objective, theta, expert, beta=0.5).sum().backward()
        optimizer.step()
        after[objective] = torch.softmax(theta.detach()[0], dim=-1)
    worst = 2
    assert after["distil"][worst] < student[worst] - 0.005
    assert after["reverse_kl"][worst] > student[worst] + 0.2  # 0.45 -> 0.67
    assert after["jsd"][worst] > student[worst] + 0.002
    expected_reward = {name: float(pi @ rewards) for name, pi in after.items()}
    before = float(student @ rewards)
    assert expected_reward["distil"] > before + 0.03 and expected_reward["reverse_kl"] < before - 0.05


def test_the_score_function_term_credits_each_decision_with_the_disagreement_after_it():
    """By hand: C_t sums the costs at later labelled states; a decision followed by an abstention
    (row 2, position 1 unlabelled) has no known C_t and no credit; the baseline is the other
    known rollouts' mean C_t at the same position."""
    alive = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    labelled = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    costs = torch.tensor([[1.0, 2.0, 3.0], [4.0, 2.0, 0.0], [6.0, 7.0, 8.0]])
    chosen = torch.tensor([[-0.1, -0.2, -0.3], [-0.4, -0.5, 0.0], [-0.6, -0.7, -0.8]], requires_grad=True)
    # C: row 0 [5, 3, 0], row 1 [2, 0, -], row 2 [-, 8, 0]; advantages: t0 [3, -3, -], t1 [-1, -5.5, 6.5], t2 0
    term = score_function_term(chosen, costs, labelled, alive)
    assert torch.allclose(term, torch.tensor([-0.1, 3.95, -4.55]))
    term.sum().backward()
    assert torch.allclose(chosen.grad, torch.tensor([[3.0, -1.0, 0.0], [-3.0, -5.5, 0.0], [0.0, 6.5, 0.0]]))


def test_disagreement_is_zero_where_the_student_matches_an_uncertain_expert():
    expert = torch.tensor([[0.5, 0.3, 0.2], [0.9, 0.1, 0.0]])
    assert torch.allclose(disagreement(expert.clamp_min(1e-30).log(), expert), torch.zeros(2), atol=1e-6)
    student = torch.tensor([[0.2, 0.3, 0.5]]).log()
    expected = 0.5 * math.log(0.5 / 0.2) + 0.2 * math.log(0.2 / 0.5)
    assert disagreement(student, expert[:1]).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("disagree_after", ["A", "B"])
def test_on_a_two_step_problem_only_the_sequence_level_form_moves_the_first_decision(disagree_after):
    """A tabular student picks A or B, then x or y. The expert matches it at the first state and
    after one of A, B, and disagrees after the other. The per-state forward CE has no gradient
    on the first decision; the sequence-level form moves it away from the branch that leads to
    disagreement."""
    first = torch.zeros(2, requires_grad=True)  # logits of A, B
    second = {branch: torch.zeros(2, requires_grad=True) for branch in "AB"}  # logits of x, y after each
    expert_first = torch.tensor([0.5, 0.5])
    expert_second = {branch: torch.tensor([0.5, 0.5]) for branch in "AB"}
    expert_second[disagree_after] = torch.tensor([0.95, 0.05])
    generator = torch.Generator().manual_seed(0)
    branches = torch.multinomial(torch.softmax(first.detach(), -1), 64, replacement=True, generator=generator)

    def losses():
        per_state, chosen, costs = [], [], []
        for b in branches.tolist():
            branch = "AB"[b]
            first_logprobs, second_logprobs = torch.log_softmax(first, -1), torch.log_softmax(second[branch], -1)
            action = int(torch.multinomial(second_logprobs.exp().detach(), 1, generator=generator))
            per_state.append(-(expert_first * first_logprobs).sum() - (expert_second[branch] * second_logprobs).sum())
            chosen.append(torch.stack([first_logprobs[b], second_logprobs[action]]))
            costs.append(torch.stack([disagreement(first_logprobs[None], expert_first[None])[0],
                                      disagreement(second_logprobs[None], expert_second[branch][None])[0]]))
        everywhere = torch.ones(len(branches), 2, dtype=torch.bool)
        state = torch.stack(per_state).mean()
        return state, state + score_function_term(torch.stack(chosen), torch.stack(costs), everywhere, everywhere).mean()

    state_loss, sequence_loss = losses()
    (state_gradient,) = torch.autograd.grad(state_loss, first, retain_graph=True)
    (sequence_gradient,) = torch.autograd.grad(sequence_loss, first)
    assert torch.allclose(state_gradient, torch.zeros(2), atol=1e-7)
    toward_a = -(sequence_gradient[0] - sequence_gradient[1])  # a gradient step's change of logit(A) - logit(B)
    assert (toward_a > 0.05) if disagree_after == "B" else (toward_a < -0.05), sequence_gradient
