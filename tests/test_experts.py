"""Experts and the DAgger step without Ray: exact labels, the tail, the cache, alignment, Pass@k."""

import math

import numpy as np
import pytest
import torch

from workloads.arithmetic import generate_splits
from workloads.completions import completion_response, encode_prompts
from workloads.lm import Rollouts, continuation_logprobs
from workloads.config import ConfigError
from workloads.dagger import (
    distillation_loss, label_statistics, pass_at_k, states_from_rollouts, step_candidate_loss, step_states,
)
from workloads.experts import (
    CachedExpert, EndpointExpert, HFExpert, MalformedExpertResponse, OracleExpert, RecoveringOracle, StepCandidates,
    StudentState, ExpertLabels,
    TokenizerMismatch, actual_token_logprobs, parse_prompt_logprobs,
)
from workloads.sft import masked_token_cross_entropy, tokenize_examples
from workloads.tasks import TaskConfig
from workloads.lm import TinyLMConfig, build_tiny_lm, tiny_lm

PROBLEMS = generate_splits(TaskConfig(num_train=20, num_eval=2), seed=0)[0]


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    directory = build_tiny_lm(TinyLMConfig(), tmp_path_factory.mktemp("student"), seed=0)
    return tiny_lm(TinyLMConfig(), seed=0)[1], directory


def rollouts_of(tokenizer, prompts, completions) -> Rollouts:
    """Rollouts whose completions are the given texts (then eos), laid out as `sample_groups` does."""
    enc = tokenizer([tokenizer.bos_token + p for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
    ids = [tokenizer.encode(c, add_special_tokens=False) + [tokenizer.eos_token_id] for c in completions]
    width = max(map(len, ids))
    completion = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    return Rollouts(torch.cat([enc["input_ids"], completion], 1), torch.cat([enc["attention_mask"], mask], 1), mask,
                    list(completions), [False] * len(completions))


def test_oracle_labels_the_correct_token_until_the_first_mistake(student):
    tokenizer, _ = student
    problem = PROBLEMS[0]
    wrong = problem.solution.replace("=", "=1", 1)  # a wrong digit right after the first "="
    rollouts = rollouts_of(tokenizer, [problem.prompt] * 2, [problem.solution, wrong])
    right_labels, wrong_labels = OracleExpert(tokenizer, top_k=4).label(states_from_rollouts(rollouts, [problem.solution] * 2))
    correct = tokenizer.encode(problem.solution, add_special_tokens=False) + [tokenizer.eos_token_id]
    assert right_labels.valid.all() and right_labels.token_ids[:, 0].tolist() == correct
    assert np.all(np.exp(right_labels.logprobs).sum(axis=1) == 1.0)  # a point mass: no tail
    first_wrong = wrong.index("=") + 1
    assert wrong_labels.valid.tolist() == [True] * (first_wrong + 1) + [False] * (len(wrong_labels.valid) - first_wrong - 1)
    assert wrong_labels.token_ids[first_wrong, 0] == correct[first_wrong]  # the correction at the mistake
    with pytest.raises(ConfigError, match="character-level"):
        OracleExpert(tiny_lm(TinyLMConfig(bpe_merges=20), texts=[p.solution for p in PROBLEMS])[1], top_k=4)
    with pytest.raises(ConfigError, match="privileged"):
        OracleExpert(tokenizer, 4).label([StudentState((1,), (5,), "")])


SOLUTION = "12+34=46\n46-5=41\nAnswer: 41\n"  # Q: 12+34-5


def test_the_recovering_oracle_gives_correct_continuations_from_any_state(student):
    tokenizer, _ = student
    oracle = RecoveringOracle(tokenizer, top_k=4)
    char = lambda c: tokenizer.encode(c, add_special_tokens=False)[0]  # noqa: E731
    half = {char("1"): 0.5, char("3"): 0.5}  # "12+34=46" or "34+12=46": two correct first steps
    assert oracle.distribution(SOLUTION, "") == half
    assert oracle.distribution(SOLUTION, "34+") == {char("1"): 1.0}
    assert oracle.distribution(SOLUTION, "12+34=47") == {char("\n"): 1.0}  # a wrong line: end it
    assert oracle.distribution(SOLUTION, "12+34=47\n") == half  # then redo the step from the last correct value
    assert oracle.distribution(SOLUTION, "34+12=46\n") == {char("4"): 1.0}  # "46-5": subtraction has one order
    assert oracle.distribution(SOLUTION, "12+34=46\n46-5=41\nAnswer: 4") == {char("1"): 1.0}
    assert oracle.distribution(SOLUTION, "12+34=46\n46-5=41\nAnswer: 41\n") == {tokenizer.eos_token_id: 1.0}

    # labels along a rollout with a mistake: valid at every position (the plain oracle abstains after
    # the mistake), a real distribution where two steps are correct, the correction after the wrong line
    wrong = "12+34=47\n34+12=46\n46-5=41\nAnswer: 41\n"
    rollouts = rollouts_of(tokenizer, ["Q: 12+34-5\n"], [wrong])
    (labels,) = oracle.label(states_from_rollouts(rollouts, [SOLUTION]))
    assert labels.valid.all() and len(labels.valid) == len(wrong) + 1
    probabilities = np.exp(labels.logprobs)
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert sorted(probabilities[0][probabilities[0] > 0].tolist()) == [0.5, 0.5]
    assert labels.token_ids[7, 0] == char("6")  # at "12+34=4|": the right digit (the student wrote 7)
    assert labels.token_ids[8, 0] == char("\n")  # at "12+34=47|": the line is wrong, end it
    nine = len("12+34=47\n")
    assert set(labels.token_ids[nine, :2].tolist()) == {char("1"), char("3")}
    assert labels.token_ids[-1, 0] == tokenizer.eos_token_id
    (plain,) = OracleExpert(tokenizer, top_k=4).label(states_from_rollouts(rollouts, [SOLUTION]))
    assert not plain.valid[nine:].any()

    (steps,) = oracle.candidates(step_states(states_from_rollouts(rollouts, [SOLUTION]), tokenizer)[:1], k=4)
    assert sorted(tokenizer.decode(list(s)) for s in steps.token_ids) == ["12+34=46\n", "34+12=46\n"]
    assert np.allclose(np.exp(steps.logprobs), 0.5)
    with pytest.raises(ConfigError, match="arithmetic"):
        oracle.label([StudentState((1,), (char("x"),), "def f(x):\n    return x\n")])


def test_distillation_loss_on_the_oracle_path_is_the_sft_loss(student):
    tokenizer, directory = student
    model, _ = tiny_lm(TinyLMConfig(), seed=0)
    problems = PROBLEMS[:3]
    rollouts = rollouts_of(tokenizer, [p.prompt for p in problems], [p.solution for p in problems])
    labels = OracleExpert(tokenizer, top_k=4).label(states_from_rollouts(rollouts, [p.solution for p in problems]))
    loss, labelled = distillation_loss(model, rollouts, labels, "distil")
    data = tokenize_examples(tokenizer, [p.prompt for p in problems], [p.solution for p in problems], 64)
    sft = masked_token_cross_entropy(model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits, data.labels)
    assert labelled == sum(len(p.solution) + 1 for p in problems)
    assert loss.item() == pytest.approx(sft.item(), rel=1e-5)
    per_sequence, _ = distillation_loss(model, rollouts, labels, "distil", average="sequence")
    assert per_sequence.item() == pytest.approx(loss.item() * labelled / 3, rel=1e-5)
    # the sequence-level form adds the score-function term: a gradient the per-state form does not
    # have; a lone rollout has no other rollout as its baseline, so it gets no such credit
    def gradient(loss):
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])
    sequence, _ = distillation_loss(model, rollouts, labels, "distil", credit="sequence")
    assert not torch.allclose(gradient(sequence), gradient(distillation_loss(model, rollouts, labels, "distil")[0]))
    alone = rollouts_of(tokenizer, [problems[0].prompt], [problems[0].solution])
    alone_labels = labels[:1]
    assert torch.allclose(gradient(distillation_loss(model, alone, alone_labels, "distil", credit="sequence")[0]),
                          gradient(distillation_loss(model, alone, alone_labels, "distil")[0]))
    with pytest.raises(ValueError, match="credit=sequence"):
        distillation_loss(model, rollouts, labels, "reverse_kl", credit="sequence")
    for label in labels:
        label.valid[:] = False  # an expert that abstains everywhere: no update, no nan
    nothing, count = distillation_loss(model, rollouts, labels, "reverse_kl")
    assert count == 0 and nothing.item() == 0.0


def test_hf_expert_labels_are_the_models_top_k_with_the_tail_left_over(student):
    tokenizer, directory = student
    expert = HFExpert(str(directory), tokenizer, top_k=5)
    problem = PROBLEMS[0]
    rollouts = rollouts_of(tokenizer, [problem.prompt], [problem.solution])
    (labels,) = expert.label(states_from_rollouts(rollouts, [""]))
    with torch.no_grad():
        logits = expert.model(input_ids=rollouts.input_ids[:, rollouts.attention_mask[0].bool()]).logits[0]
    start = int(rollouts.attention_mask[0, : rollouts.prompt_length].sum())
    expected = torch.log_softmax(logits[start - 1 : -1], dim=-1).topk(5, dim=-1)
    assert labels.token_ids.tolist() == expected.indices.tolist()
    assert np.allclose(labels.logprobs, expected.values.numpy(), atol=1e-5)
    assert (np.exp(labels.logprobs).sum(axis=1) < 1).all()  # the tail keeps the rest


def test_self_distillation_labels_are_the_students_own_with_the_feedback_in_front(student):
    """The self-distillation expert is the student model itself, reading the privileged feedback
    before the prompt: the same labels as that model loaded as an HF expert, and not the labels
    it gives without the feedback."""
    tokenizer, directory = student
    loaded = HFExpert(str(directory), tokenizer, top_k=5)
    itself = HFExpert.from_model(loaded.model, tokenizer, top_k=5)
    problem = PROBLEMS[0]
    rollouts = rollouts_of(tokenizer, [problem.prompt], [problem.solution])
    (with_feedback,) = itself.label(states_from_rollouts(rollouts, [problem.solution]))
    (reference,) = loaded.label(states_from_rollouts(rollouts, [problem.solution]))
    (without,) = itself.label(states_from_rollouts(rollouts, [""]))
    assert with_feedback.token_ids.tolist() == reference.token_ids.tolist()
    assert np.array_equal(with_feedback.logprobs, reference.logprobs)
    assert not np.allclose(with_feedback.logprobs, without.logprobs, atol=1e-3)


@pytest.mark.parametrize("tokenizer_style", ["bytes", "qwen2-chat"])
def test_the_privileged_expert_is_trained_on_exactly_what_it_reads_when_labelling(tokenizer_style):
    """distil's default expert is SFT-ed (sft.Config.privileged) on feedback + prompt -> solution;
    when it labels a student state it must read the same token ids before the completion, or
    it is asked about inputs it was never trained on."""
    from pipelines.sft import Config as SFTConfig
    from workloads.experts import expert_sequences
    from workloads.lm import encode_text, format_prompt

    tokenizer = tiny_lm(TinyLMConfig(tokenizer=tokenizer_style), seed=0)[1]
    problem = PROBLEMS[3]
    (trained_prompt,) = SFTConfig(privileged="answer").prompts(tokenizer, [problem])
    assert trained_prompt.startswith(f"Reference:\nAnswer: {problem.answer}\n")
    state = StudentState(tuple(encode_text(tokenizer, format_prompt(tokenizer, problem.prompt))),
                         tuple(tokenizer.encode(problem.solution, add_special_tokens=False)), problem.outcome)
    (read,), (start,) = expert_sequences([state], tokenizer)
    assert read[:start] == encode_text(tokenizer, trained_prompt)
    assert SFTConfig().prompts(tokenizer, [problem]) == [format_prompt(tokenizer, problem.prompt)]


def test_the_privileged_experts_training_examples_include_slips_and_their_corrections(student):
    """sft.Config.recovery: a seeded share of examples start from a slip after the prompt and
    target the correct continuation from it; the rest are the plain solution."""
    from pipelines.sft import Config as SFTConfig
    from workloads.arithmetic import check_answer

    tokenizer, _ = student
    problems = generate_splits(TaskConfig(num_train=200, num_eval=2), seed=0)[0]
    plain = SFTConfig(privileged="answer").prompts(tokenizer, problems)
    prompts, targets = SFTConfig(privileged="answer", recovery=0.5, seed=3).examples(tokenizer, problems)
    assert (prompts, targets) == SFTConfig(privileged="answer", recovery=0.5, seed=3).examples(tokenizer, problems)
    slips = [i for i in range(len(problems)) if prompts[i] != plain[i]]
    assert 70 <= len(slips) <= 130
    for i, problem in enumerate(problems):
        assert prompts[i].startswith(plain[i])
        written = prompts[i][len(plain[i]):]
        assert i in slips or targets[i] == problem.solution
        assert check_answer(problem, written + targets[i])
    assert SFTConfig(privileged="answer").examples(tokenizer, problems) == (plain, [p.solution for p in problems])


def test_a_tokenizer_mismatch_is_refused_unless_text_alignment_is_on(student, tmp_path):
    tokenizer, _ = student
    other = build_tiny_lm(TinyLMConfig(bpe_merges=30), tmp_path / "bpe-expert", texts=[p.solution for p in PROBLEMS] * 5)
    with pytest.raises(TokenizerMismatch, match="expert.alignment=text"):
        HFExpert(str(other), tokenizer, top_k=4)
    expert = HFExpert(str(other), tokenizer, top_k=4, alignment="text")
    problem = PROBLEMS[0]
    rollouts = rollouts_of(tokenizer, [problem.prompt], [problem.solution])
    (labels,) = expert.label(states_from_rollouts(rollouts, [""]))
    assert 0 < labels.valid.sum() < len(labels.valid)  # labels only where both tokenizers start a token
    mass = np.exp(labels.logprobs[labels.valid]).sum(axis=1)
    assert (mass <= 1 + 1e-5).all() and (mass > 0).all()


def test_the_endpoint_format_round_trips_to_the_same_labels_as_the_local_model(student):
    tokenizer, directory = student
    local = HFExpert(str(directory), tokenizer, top_k=4)
    problem = PROBLEMS[1]
    state = states_from_rollouts(rollouts_of(tokenizer, [problem.prompt], [problem.solution]), [""])[0]
    sequence = list(state.prompt_ids) + list(state.completion_ids)
    response = completion_response(local.model, tokenizer, "m", encode_prompts(tokenizer, [sequence], len(tokenizer), 256),
                                   max_tokens=1, temperature=0.0, stop=[], seed=None, top_k_prompt=4)
    parsed = parse_prompt_logprobs(response["choices"][0], 0, sequence, len(state.prompt_ids), 4, tokenizer)
    (expected,) = local.label([state])
    assert parsed.token_ids.tolist() == expected.token_ids.tolist()
    assert np.allclose(parsed.logprobs, expected.logprobs, atol=1e-5)


def test_completions_sample_n_choices_per_prompt_and_name_their_stop(student):
    tokenizer, directory = student
    local = HFExpert(str(directory), tokenizer, top_k=4)
    sequences = encode_prompts(tokenizer, [PROBLEMS[0].prompt, PROBLEMS[1].prompt], len(tokenizer), 256)
    response = completion_response(local.model, tokenizer, "m", sequences, max_tokens=12, temperature=1.0, stop=["\n"],
                                   seed=0, top_k_prompt=0, n=3)
    choices = response["choices"]
    assert [c["index"] for c in choices] == list(range(6))
    assert [len(c["prompt_logprobs"]) for c in choices] == [len(sequences[0])] * 3 + [len(sequences[1])] * 3
    for choice in choices:
        assert "\n" not in choice["text"]
        assert choice["stop_reason"] in ("\n", None)
        assert choice["finish_reason"] == ("stop" if choice["stop_reason"] else choice["finish_reason"])


def test_endpoint_step_candidates_need_the_stop_reason(student):
    tokenizer, _ = student
    expert = EndpointExpert("http://127.0.0.1:9", "m", tokenizer, top_k=2)
    newline, eos = tokenizer.encode("\n", add_special_tokens=False), tokenizer.eos_token_id
    assert expert.sampled_step({"text": "1+1=2", "finish_reason": "stop", "stop_reason": "\n"}, 0) == (
        *tokenizer.encode("1+1=2", add_special_tokens=False), *newline)
    assert expert.sampled_step({"text": "", "finish_reason": "stop", "stop_reason": None}, 0) == (eos,)
    assert expert.sampled_step({"text": "1+1=", "finish_reason": "length", "stop_reason": None}, 0) is None
    with pytest.raises(MalformedExpertResponse, match=r"choices\[3\]\.stop_reason: missing"):
        expert.sampled_step({"text": "1+1=2", "finish_reason": "stop"}, 3)
    with pytest.raises(MalformedExpertResponse, match=r"choices\[0\]\.prompt_logprobs\[2\]: no numeric log-prob"):
        actual_token_logprobs({"prompt_logprobs": [None, {"5": -0.5}, {"8": -1.0}]}, 0, [1, 5, 7], 1)
    assert actual_token_logprobs({"prompt_logprobs": [None, {"5": {"logprob": -0.5}}, {"7": -1.0, "8": -0.1}]},
                                 0, [1, 5, 7], 1).tolist() == [-0.5, -1.0]


@pytest.mark.parametrize("choice, message", [
    ({"text": "", "prompt_logprobs": None}, "expected one entry per prompt token"),
    ({"text": "", "prompt_logprobs": [None, None, None]}, r"prompt_logprobs\[1\]: expected a mapping"),
    ({"text": "", "prompt_logprobs": [None, {"5": 0.0}, {"x": {"logprob": -1}}]}, r"\['x'\]: not a token id"),
    ({"text": "", "prompt_logprobs": [None, {"5": 0.0}, {"7": {"logprob": "high"}}]}, "numeric log-prob"),
])
def test_malformed_prompt_logprobs_name_the_field(choice, message):
    with pytest.raises(MalformedExpertResponse, match=message):
        parse_prompt_logprobs(choice, 0, [1, 5, 7], 1, top_k=2)


def test_an_endpoint_serving_another_tokenizer_is_refused(student):
    tokenizer, _ = student
    token = tokenizer.encode("7", add_special_tokens=False)[0]
    choice = {"text": "", "prompt_logprobs": [None, {str(token): {"logprob": -0.1, "decoded_token": "seven"}}]}
    with pytest.raises(TokenizerMismatch, match="another tokenizer"):
        parse_prompt_logprobs(choice, 0, [1, token], 1, top_k=2, student_tokenizer=tokenizer)


def test_the_cache_answers_repeated_states_and_batches_the_misses(student):
    tokenizer, _ = student

    class CountingOracle(OracleExpert):
        """The real oracle, recording the batch size of every call that reaches it."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.calls: list[int] = []

        def label(self, states):
            self.calls.append(len(states))
            return super().label(states)

    backend = CountingOracle(tokenizer, top_k=3)
    cached = CachedExpert(backend, batch_size=2, capacity=100)
    problem = PROBLEMS[0]
    states = states_from_rollouts(rollouts_of(tokenizer, [problem.prompt] * 3, [problem.solution, "1", problem.solution]),
                                  [problem.solution] * 3)
    first = cached.label(states)
    assert backend.calls == [2] and first[0] is first[2]
    cached.label(states)
    assert backend.calls == [2] and cached.stats()["expert_cache_hits"] == 4


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))
    assert pass_at_k(8, 0, 8) == 0.0 and pass_at_k(8, 1, 8) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_endpoint_expert_refuses_a_dead_endpoint_quickly(student):
    tokenizer, _ = student
    from workloads.endpoints import EndpointError

    expert = EndpointExpert("http://127.0.0.1:9", "m", tokenizer, top_k=2, timeout_s=1.0, retries=1)
    with pytest.raises(EndpointError, match="unreachable after 2 attempts"):
        expert.label([StudentState((1, 5), (6,), "")])


def test_step_level_states_oracle_candidates_and_the_candidate_loss(student):
    """Every line start of a completion is a state; the oracle's one candidate there is the
    correct next line until the student's lines stop being the solution's; the loss is
    -sum_i p_E(c_i) log pi(c_i | s) with p_E renormalised over the candidates."""
    tokenizer, _ = student
    model, _ = tiny_lm(TinyLMConfig(), seed=0)
    problem = PROBLEMS[0]
    wrong = problem.solution.replace("Answer: ", "Answer: 1")
    rollouts = rollouts_of(tokenizer, [problem.prompt] * 2, [problem.solution, wrong])
    states = step_states(states_from_rollouts(rollouts, [problem.solution] * 2), tokenizer)
    lines = problem.solution.splitlines(keepends=True)
    prefixes = ["".join(lines[:i]) for i in range(len(lines) + 1)]
    assert [tokenizer.decode(list(s.completion_ids)) for s in states] == prefixes + prefixes[:-1] + [wrong]
    answers = OracleExpert(tokenizer, top_k=4).candidates(states, 4)
    expected_steps = lines + [tokenizer.eos_token]
    for answer, step in zip(answers[:-1], expected_steps + expected_steps[:2], strict=True):
        assert [tokenizer.decode(list(c)) for c in answer.token_ids] == [step] and answer.logprobs.tolist() == [0.0]
    assert answers[-1].token_ids == []  # after the wrong answer line: abstain

    # the loss against an independent computation, with two weighted candidates on one state
    state = states[1]
    steps = [tuple(tokenizer.encode(t, add_special_tokens=False)) for t in ("Answer: 9\n", "Answer: 7\n")]
    two = StepCandidates(steps, np.log(np.array([0.75, 0.25], np.float32)))
    loss, labelled = step_candidate_loss(model, [state, states[-1]], [two, StepCandidates.abstain()], tokenizer.pad_token_id)
    expected = 0.0
    for step, weight in zip(steps, (0.75, 0.25)):
        sequence = list(state.prompt_ids + state.completion_ids + step)
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([sequence])).logits[0].float(), dim=-1)
        start = len(state.prompt_ids) + len(state.completion_ids)
        expected -= weight * sum(logprobs[start + j - 1, token] for j, token in enumerate(step))
    assert labelled == 1 and loss.item() == pytest.approx(float(expected), rel=1e-5)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    nothing, count = step_candidate_loss(model, states[-1:], [StepCandidates.abstain()], tokenizer.pad_token_id)
    assert count == 0 and nothing.item() == 0.0


def test_hf_expert_step_candidates_are_its_own_distinct_samples_scored_by_it(student):
    tokenizer, directory = student
    expert = HFExpert(str(directory), tokenizer, top_k=4)
    problem = PROBLEMS[0]
    states = [StudentState((tokenizer.bos_token_id, *tokenizer.encode(problem.prompt, add_special_tokens=False)), ()),
              StudentState((tokenizer.bos_token_id, *tokenizer.encode(PROBLEMS[1].prompt, add_special_tokens=False)), ())]
    torch.manual_seed(0)
    answers = CachedExpert(expert).candidates(states, 6)
    assert any(answer.token_ids for answer in answers)
    for state, answer in zip(states, answers):
        assert len(answer.token_ids) == len(set(answer.token_ids)) <= 6 and len(answer.logprobs) == len(answer.token_ids)
        for step in answer.token_ids:  # each ends exactly at its first line break or eos
            ends = [j for j, t in enumerate(step) if t == tokenizer.eos_token_id or "\n" in tokenizer.decode([t])]
            assert ends == [len(step) - 1]
        if answer.token_ids:
            with torch.no_grad():
                scores = continuation_logprobs(expert.model, [state.prompt_ids] * len(answer.token_ids), answer.token_ids,
                                               tokenizer.pad_token_id)
            assert np.allclose(answer.logprobs, scores.numpy(), atol=1e-4) and (answer.logprobs <= 0).all()


def test_a_few_step_level_updates_raise_the_students_probability_of_the_experts_lines(student):
    """Fixed seed, 30 AdamW steps on the oracle's candidates at every line start of 8 problems:
    the student's log-probability of the correct lines (held-out problems too) rises clearly."""
    tokenizer, _ = student
    model, _ = tiny_lm(TinyLMConfig(), seed=0)
    train, held_out = PROBLEMS[:8], PROBLEMS[8:12]

    def states_and_lines(problems):
        rollouts = rollouts_of(tokenizer, [p.prompt for p in problems], [p.solution for p in problems])
        states = step_states(states_from_rollouts(rollouts, [p.solution for p in problems]), tokenizer)
        return states, OracleExpert(tokenizer, top_k=4).candidates(states, 4)

    def mean_logprob(states, answers) -> float:
        with torch.no_grad():
            return -step_candidate_loss(model, states, answers, tokenizer.pad_token_id)[0].item()

    train_states, train_answers = states_and_lines(train)
    held_states, held_answers = states_and_lines(held_out)
    before_train, before_held = mean_logprob(train_states, train_answers), mean_logprob(held_states, held_answers)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(30):
        loss, _ = step_candidate_loss(model, train_states, train_answers, tokenizer.pad_token_id)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after_train, after_held = mean_logprob(train_states, train_answers), mean_logprob(held_states, held_answers)
    assert after_train > before_train + 10.0 and after_held > before_held + 5.0, (before_train, after_train, before_held, after_held)


def test_label_statistics_measure_how_spread_the_expert_is():
    point = ExpertLabels(np.array([[3, 0]]), np.array([[0.0, -math.inf]], np.float32), np.array([True]))
    spread = ExpertLabels(np.array([[1, 2], [1, 2]]), np.log(np.array([[0.5, 0.25], [0.9, 0.1]], np.float32)),
                          np.array([True, False]))  # the second position abstains
    stats = label_statistics([point, spread])
    # entropies 0 and -(0.5 ln 0.5 + 2 * 0.25 ln 0.25) (the tail bucket holds 0.25); top-1 masses 1 and 0.5
    assert stats["expert_entropy"] == pytest.approx((0 + 1.5 * math.log(2)) / 2, abs=1e-6)
    assert stats["expert_top1_mass"] == pytest.approx(0.75, abs=1e-6)
    steps = label_statistics([StepCandidates([(1,), (2,)], np.log(np.array([0.2, 0.6], np.float32))), StepCandidates.abstain()])
    assert steps["expert_top1_mass"] == pytest.approx(0.75) and steps["expert_entropy"] == pytest.approx(
        -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert label_statistics([StepCandidates.abstain()]) == {}
