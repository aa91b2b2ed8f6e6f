"""LongTraceRL's held-out questions: split by fact so no training target states a held-out fact,
closed-book prompts, and the early stopping that selects GRPO's checkpoint on validation."""

from __future__ import annotations

import pytest

from pipelines.longtrace import EarlyStopping
from workloads.longtrace.kg import KGConfig, Skips, build_corpus, generate_questions, synthetic_kg
from workloads.longtrace.reader import ReaderExample, chain_facts, closed_book, is_held_out, is_held_out_fact
from workloads.longtrace.search import INSTRUCTION, context_content
from workloads.lm import build_tokenizer


@pytest.fixture(scope="module")
def examples():
    config, skips = KGConfig(num_questions=400), Skips()
    kg = synthetic_kg(config, 0)
    questions = generate_questions(kg, build_corpus(kg, config, skips), config, 0, skips)
    return [ReaderExample(q.id, f"prompt {q.id}", q.label, q.rubrics, 0, q.question) for q in questions]


def test_chain_facts_are_the_consecutive_pairs():
    assert chain_facts(["Ana Ko", "Lyo", "Veland"]) == [("Ana Ko", "Lyo"), ("Lyo", "Veland")]
    assert chain_facts(["Ana Ko"]) == []


def test_no_training_question_walks_a_held_out_fact(examples):
    held = [e for e in examples if is_held_out(e, 0.1)]
    train = [e for e in examples if not is_held_out(e, 0.1)]
    held_facts = {f for e in held for f in chain_facts(e.rubrics) if is_held_out_fact(f, 0.1)}
    assert held_facts and 0.1 * len(examples) <= len(held) <= 0.35 * len(examples)
    for example in train:
        assert not held_facts & set(chain_facts(example.rubrics)), example.question_id
    # the split is a property of the facts, not of the question ids
    renamed = [ReaderExample("x" + e.question_id, e.prompt, e.label, e.rubrics, 0, e.question) for e in examples]
    assert [is_held_out(e, 0.1) for e in renamed] == [is_held_out(e, 0.1) for e in examples]


def test_closed_book_keeps_the_question_and_drops_every_document(examples):
    tokenizer = build_tokenizer()
    example = examples[0]
    blind = closed_book(example, tokenizer)
    assert blind.prompt.startswith(INSTRUCTION) and example.question in blind.prompt
    assert "[d0" not in blind.prompt and blind.label == example.label and blind.rubrics == example.rubrics
    assert blind.prompt.startswith(context_content(example.question, []))


def test_early_stopping_counts_evaluations_without_a_gain():
    stopping = EarlyStopping(patience=2)
    assert [stopping.update(v) for v in (0.3, 0.4, 0.4, 0.35)] == [False, False, False, True]
    assert stopping.state() == {"best": 0.4, "stale": 2}
    resumed = EarlyStopping(2, {"best": 0.4, "stale": 1})
    assert resumed.update(0.39) is True  # it counts on from the checkpoint's state
    never = EarlyStopping(patience=0)
    assert not any(never.update(v) for v in (0.5, 0.1, 0.1, 0.1, 0.1))
