"""The distillation core: exact gradients, the tail bucket, and the paper's point on a bandit."""

import math

import pytest
import torch
import torch.nn.functional as F

from workloads.distill import (
    CandidateSet, DiagonalGaussian, TopKDistribution, candidate_cross_entropy, gaussian_distillation_loss,
    per_state_objective, student_bucket_logprobs, token_objective,
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
