"""The rubric reward rule by rule, with hand-computed values."""

import pytest

from workloads.longtrace import group_rewards, grpo_advantages, norm, rubric_score
from workloads.longtrace.reward import answer_content, f1_judge, final_answer


def test_norm_keeps_words_and_cjk_characters_only():
    assert norm("  Hello, World!  ") == "hello world"
    assert norm("snake_case-Name 42%") == "snake_case name 42"
    assert norm("北京 is the Capital。") == "北 京 is the capital"
    assert norm("é?!") == ""  # accented letters are not in [a-zA-Z0-9_]


def test_content_is_after_the_last_think_and_answer_after_the_last_marker():
    assert answer_content("<think>x</think>Answer: Paris") == "Answer: Paris"
    assert answer_content("<think>a</think>b</think> final") == " final"
    assert answer_content("<think>never closed") is None
    assert answer_content("   ") is None
    assert final_answer("Answer: no\nAnswer: Lyon") == " Lyon"
    assert final_answer("just text") == "just text"
    assert final_answer("answer: no\nANSWER: Lyon") == " Lyon"  # the marker in any case
    assert final_answer("Reasoning... final answer: Nice") == " Nice"


def test_rubric_score_is_a_substring_match_without_word_boundaries():
    assert rubric_score("the capitalism of Paris", ["capital", "Paris", "Rome"]) == pytest.approx(2 / 3)
    assert rubric_score("anything", []) == 0.0
    assert rubric_score("巴黎是首都", ["巴黎"]) == 1.0
    # rubrics that normalise to "" ("?!", "é", "") are in every text: they never count, but stay in the count
    assert rubric_score("Paris", ["?!", "é", "", "paris"]) == pytest.approx(1 / 4)
    assert rubric_score("Paris", ["...", "  "]) == 0.0


def test_group_rewards_hand_computed():
    label, rubrics = "Lyon", ["Alice", "Bob", "Lyon", "France"]
    responses = [
        "Alice met Bob in Lyon. Answer: Lyon",          # correct, r_rub 3/4
        "Answer: Lyon",                                 # correct, r_rub 1/4
        "Alice, Bob, Lyon and France. Answer: Paris",   # wrong,   r_rub 4/4 (the group max)
        "<think>Alice Bob Lyon France ...",             # truncated: 0, counts as r_rub 0
    ]
    rewards = group_rewards(responses, label, rubrics, eta=0.3)
    assert rewards == pytest.approx([0.7 + 0.3 * 0.75, 0.7 + 0.3 * 0.25, 0.0, 0.0])
    assert group_rewards(responses, label, rubrics, eta=0.0) == [1.0, 1.0, 0.0, 0.0]


def test_max_normalisation_and_empty_rubrics():
    # only correct answers, max r_rub 2/4 -> the best correct one gets the full rubric bonus
    rewards = group_rewards(["Alice Lyon Answer: Lyon", "Answer: lyon"], "Lyon", ["Alice", "Bob", "Lyon", "X"])
    assert rewards == pytest.approx([1.0, 0.7 + 0.3 * 0.5])
    assert group_rewards(["Answer: Lyon"], "Lyon", []) == pytest.approx([0.7])
    assert group_rewards(["Answer: Rome"], "Lyon", ["Lyon"]) == [0.0]


def test_f1_judge_and_bad_arguments():
    assert f1_judge("the city of Lyon", "Lyon city") == 0.0  # F1 2*0.5*1/(1.5) = 0.67 < 0.8
    assert f1_judge("Lyon city", "city of Lyon") == 1.0       # F1 0.8
    assert group_rewards(["Answer: Lyon city"], "city of Lyon", [], judge="f1") == pytest.approx([0.7])
    with pytest.raises(ValueError, match="judge"):
        group_rewards(["x"], "y", [], judge="llm")
    with pytest.raises(ValueError, match="eta"):
        group_rewards(["x"], "y", [], eta=1.5)


def test_grpo_advantages():
    advantages = grpo_advantages([1.0, 0.0, 0.0, 1.0])
    assert advantages == pytest.approx([1.0, -1.0, -1.0, 1.0], abs=1e-5)
    assert grpo_advantages([0.5, 0.5]) == [0.0, 0.0]


def test_truncated_responses_score_zero_and_leave_the_group_max():
    responses = ["A > B. Answer: C", "A > B > C. Answer: C"]
    # the second is cut off: it scores 0 and its full rubric recall (1.0) no longer sets the max
    rewards = group_rewards(responses, "C", ["A", "B", "C"], eta=0.3, truncated=[False, True])
    assert rewards == pytest.approx([0.7 + 0.3 * 1.0, 0.0])
