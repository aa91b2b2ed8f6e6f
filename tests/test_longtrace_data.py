"""LongTraceRL data construction: the KG, questions, agent trajectories, tiered contexts and
the Ray Data pipeline's Parquet output, including bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workloads.longtrace.format import BuildOutcome, questions_per_call, write_rows
from tests.helpers import mlflow_client, rayworks, result_lines
from workloads.longtrace.kg import KGConfig, Skips, build_corpus, generate_questions, load_kg, phrase, synthetic_kg
from workloads.longtrace.search import (
    INSTRUCTION, AgentConfig, ContextConfig, ReadingAgent, SearchIndex, TokenCounter, Unbuildable, build_context,
    document_section, parse_agent_output,
)

SMALL = KGConfig(num_people=40, num_cities=12, num_countries=4, num_companies=8, num_universities=4, num_questions=40)


@pytest.fixture(scope="module")
def world():
    skips = Skips()
    kg = synthetic_kg(SMALL, seed=0)
    documents = build_corpus(kg, SMALL, skips)
    questions = generate_questions(kg, documents, SMALL, seed=0, skips=skips)
    return kg, documents, questions


def test_questions_are_unique_walks_whose_chain_gives_rubrics_label_and_gold_docs(world):
    kg, documents, questions = world
    titles = {d.id: d.title for d in documents}
    assert len(questions) == SMALL.num_questions
    for question in questions:
        assert SMALL.min_hops <= len(question.relations) <= SMALL.max_hops
        assert len(set(question.chain)) == len(question.chain)  # no revisits
        for head, relation, tail in zip(question.chain, question.relations, question.chain[1:]):
            assert kg.unique_tail[(head, relation)] == tail  # the answer follows from the chain
        assert question.label == question.chain[-1] and question.rubrics == question.chain
        assert [titles[i] for i in question.gold_doc_ids] == question.chain
    assert phrase("Ana Ko", ["born_in", "located_in"]) == "What is the country in which the city where Ana Ko was born is located?"
    assert phrase("X", ["likes"]) == "What is the entity that X likes?"  # generic phrasing


def test_reading_agent_finds_the_answer_from_the_question_text_alone(world):
    _, documents, questions = world
    agent = ReadingAgent(SearchIndex(documents), AgentConfig(top_k_shown=8, top_k_opened=3))
    solved, confusable = 0, 0
    for question in questions:
        trajectory = agent.run(question)
        assert len(trajectory.steps) <= agent.cfg.max_turns
        for step in trajectory.steps:
            assert set(step.opened) <= set(step.shown) and len(step.opened) <= 3
        if trajectory.answer == question.label:
            solved += 1
            assert trajectory.cited == question.gold_doc_ids  # it followed the chain, page by page
        confusable += len(trajectory.opened - set(trajectory.cited))
    assert solved >= 0.95 * len(questions)
    assert confusable >= 2 * len(questions)  # it opens look-alikes it then does not use: tier 1 exists


def test_reading_agent_never_reads_the_answer(world):
    """Everything a question knows beyond its id and text, swapped for garbage: the same trajectory."""
    import dataclasses

    _, documents, questions = world
    agent = ReadingAgent(SearchIndex(documents))
    for question in questions[:15]:
        blind = dataclasses.replace(question, label="?", chain=["?"] * len(question.chain), relations=["likes"],
                                    gold_doc_ids=["d999999"])
        assert agent.run(blind) == agent.run(question)


def test_reading_agent_needs_no_templates(tmp_path):
    """A knowledge graph from TSV with relations the project has no template for and free-text
    descriptions: the agent still follows the hops the question names."""
    triples = tmp_path / "rivers.tsv"
    triples.write_text("\n".join([
        "Ouse\tflows_into\tHumber", "Trent\tflows_into\tHumber", "Humber\tdrains_to\tNorth Sea",
        "Severn\tflows_into\tBristol Channel", "Bristol Channel\tdrains_to\tCeltic Sea",
        "Wye\tflows_into\tSevern", "Avon\tflows_into\tSevern", "Aire\tflows_into\tOuse",
    ]) + "\n")
    descriptions = tmp_path / "rivers-desc.tsv"
    descriptions.write_text("Ouse\tA river of Yorkshire, England.\nHumber\tA large tidal estuary on the east coast.\n"
                            "Severn\tThe longest river in Great Britain.\nNorth Sea\tA sea of the Atlantic Ocean.\n")
    config = KGConfig(triples=str(triples), descriptions=str(descriptions), min_hops=2, max_hops=3, num_questions=6)
    skips = Skips()
    kg = load_kg(config, 0, skips)
    documents = build_corpus(kg, config, skips)
    questions = generate_questions(kg, documents, config, 0, skips)
    assert len(questions) >= 4
    agent = ReadingAgent(SearchIndex(documents))
    for question in questions:
        assert agent.run(question).answer == question.label, question.question


def test_a_real_knowledge_graph_from_an_installed_package(workdir: Path):
    """ISO 3166 (the pycountry wheel) as TSV: subdivision -part_of-> region -in_country-> country.
    Descriptions are the package's own fields, not the synthetic templates; the reading agent
    answers from the question text; the data pipeline builds both modes and counts its skips."""
    from workloads.longtrace.sources import write_tsv

    triples, descriptions = write_tsv("pycountry", workdir / "iso3166")
    config = KGConfig(triples=str(triples), descriptions=str(descriptions), min_hops=2, max_hops=3, num_questions=60)
    skips = Skips()
    kg = load_kg(config, 0, skips)
    documents = build_corpus(kg, config, skips)
    questions = generate_questions(kg, documents, config, 0, skips)
    assert len(kg.triples) > 5000 and len(questions) == 60
    assert skips["walk shorter than min_hops (dead end or only revisits)"] > 0  # most subdivisions are one hop from a country
    france = next(d for d in documents if d.title == "France")
    assert "French Republic" in france.text
    agent = ReadingAgent(SearchIndex(documents))
    assert sum(agent.run(q).answer == q.label for q in questions) >= 0.9 * len(questions)

    proc = rayworks(workdir, "run", "longtrace_data", "--set", f"kg.triples={triples}", f"kg.descriptions={descriptions}",
                    "kg.num_questions=20", "kg.name=iso3166", "num_actors=1", "context.budget_tokens=400",
                    f"output_dir={workdir / 'iso'}",
                    timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (summary,) = result_lines(proc.stdout)
    assert summary["value"] == 20 and summary["extra"]["skipped"]
    rows = pq.read_table(workdir / "iso" / "mode=tiered").to_pylist()
    assert {t for r in rows for t in r["metadata"]["doc_tiers"]} >= {"gold", "tier1", "tier2"}
    assert {r["metadata"]["extra_reward_info"]["dataset_name"] for r in rows} == {"longtrace-iso3166"}


def test_rows_name_their_knowledge_graph():
    """kg.name names the dataset; without it, the triples file does; the synthetic world has its own name."""
    assert KGConfig(triples="/data/wordnet/triples.tsv", name="wordnet").dataset_name() == "longtrace-wordnet"
    assert KGConfig(triples="/data/wordnet-nouns.tsv").dataset_name() == "longtrace-wordnet-nouns"
    assert KGConfig().dataset_name() == "longtrace-synthetic"


def test_a_shipped_index_searches_like_the_original_on_canonical_dtypes(world, tmp_path):
    """Actors receive the index pickled; it must answer the same and keep numpy's builtin dtypes
    (an unpickled dtype takes bm25s' `np.add.at` scoring off its fast path)."""
    import pickle

    from actors.longtrace import section_tokens
    from workloads.lm import build_tokenizer

    _, documents, questions = world
    index = SearchIndex(documents)
    shipped = pickle.loads(pickle.dumps(index))
    assert all(a.dtype.isbuiltin for a in shipped.retriever.scores.values() if hasattr(a, "dtype"))
    for question in questions[:10]:
        assert shipped.search(question.question, 5) == index.search(question.question, 5)
    # Token counts from a saved tokenizer.json equal the transformers tokenizer's.
    tokenizer = build_tokenizer([document_section(d) for d in documents], 50)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    counts = section_tokens(documents[:20], str(tmp_path / "tokenizer"))
    for document in documents[:20]:
        assert counts[document.id] == len(tokenizer.encode(document_section(document), add_special_tokens=False))


def test_search_returns_the_k_best_bm25_scores_among_documents_sharing_a_term(world):
    import bm25s
    import numpy as np

    _, documents, questions = world
    index = SearchIndex(documents)
    for query in [q.question for q in questions[:10]] + [documents[3].title, "no-such-term"]:
        tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
        ids = index.retriever.get_tokens_ids(tokens)
        dense = index.retriever.get_scores_from_ids(ids) if ids else np.zeros(len(documents))
        found = index.search(query, 5)
        expected = sorted(dense[dense > 0], reverse=True)[:5]
        assert [float(dense[i]) for i in found] == [float(v) for v in expected], query
    assert index.search("no-such-term", 5) == []


@pytest.fixture(scope="module")
def reader_tokens(world):
    """The reader's tokenizer as the builder uses it: byte-level BPE learned on the corpus."""
    from workloads.lm import build_tokenizer

    _, documents, questions = world
    tokenizer = build_tokenizer([document_section(d) for d in documents] + [q.question for q in questions], 200)
    return tokenizer, TokenCounter(tokenizer.backend_tokenizer)


def test_tiered_context_has_gold_tier1_tier2_and_the_exact_budget(world, reader_tokens):
    _, documents, questions = world
    tokenizer, counter = reader_tokens
    by_id = {d.id: d for d in documents}
    agent = ReadingAgent(SearchIndex(documents))
    config = ContextConfig(budget_tokens=300, tier1_share=0.5, tier2_share=0.3)
    sections = {d.id: len(tokenizer.encode(document_section(d), add_special_tokens=False)) for d in documents}
    question = questions[0]
    trajectory = agent.run(question)
    row = build_context(question, trajectory, by_id, sections, config, 0, "tiered", counter)
    meta = row["metadata"]
    tiers = dict(zip(meta["doc_ids"], meta["doc_tiers"]))
    assert {i for i, t in tiers.items() if t == "gold"} == set(question.gold_doc_ids)
    assert {i for i, t in tiers.items() if t == "tier1"} <= trajectory.opened - set(trajectory.cited)
    assert {i for i, t in tiers.items() if t == "tier2"} <= trajectory.shown - trajectory.opened
    assert row["label"] == question.label and meta["extra_reward_info"]["rubrics"] == question.chain
    content = row["input_messages"][0]["content"]
    assert content.startswith(INSTRUCTION) and content.endswith(f"Question: {question.question}")
    for document in (by_id[i] for i, t in tiers.items() if t == "gold"):
        assert document_section(document) in content  # gold pages whole
    assert build_context(question, trajectory, by_id, sections, config, 0, "tiered", counter) == row  # seeded
    random_row = build_context(question, trajectory, by_id, sections, config, 0, "random", counter)
    assert set(random_row["metadata"]["doc_tiers"]) == {"gold", "filler"}
    with pytest.raises(Unbuildable, match="gold documents exceed the token budget"):
        build_context(question, trajectory, by_id, sections, ContextConfig(budget_tokens=40), 0, "tiered", counter)


@pytest.mark.parametrize("budget", [250, 301, 411, 517])
def test_tiered_and_random_messages_have_exactly_the_same_token_length(world, reader_tokens, budget):
    """Instruction and question included, counted by the reader's own tokenizer on the whole
    message (merges span section boundaries), for every question that fits."""
    _, documents, questions = world
    tokenizer, counter = reader_tokens
    by_id = {d.id: d for d in documents}
    agent = ReadingAgent(SearchIndex(documents))
    sections = {d.id: len(tokenizer.encode(document_section(d), add_special_tokens=False)) for d in documents}
    built = 0
    for question in questions:
        trajectory = agent.run(question)
        lengths = set()
        for mode in ("tiered", "random"):
            try:
                row = build_context(question, trajectory, by_id, sections, ContextConfig(budget_tokens=budget), 0, mode, counter)
            except Unbuildable:
                continue
            lengths.add(len(tokenizer.encode(row["input_messages"][0]["content"], add_special_tokens=False)))
        if lengths:
            built += 1
            assert lengths == {budget}, question.id
    assert built >= 0.5 * len(questions)


def test_bad_input_is_counted_or_named(tmp_path):
    triples = tmp_path / "triples.tsv"
    triples.write_text("A\tborn_in\tB\nbroken line without tabs\nB\tlocated_in\tC\nC\tcapital\tB\nD\tlikes\n")
    descriptions = tmp_path / "desc.tsv"
    descriptions.write_text("A\tA is a person.\nB\tB is a city.\n")
    skips = Skips()
    config = KGConfig(triples=str(triples), descriptions=str(descriptions), min_hops=2, max_hops=3, num_questions=5)
    kg = load_kg(config, 0, skips)
    assert len(kg.triples) == 3
    (reason,) = [r for r in skips if r.startswith("malformed line in triples.tsv")]
    assert skips[reason] == 2 and skips.examples[reason][0].endswith("triples.tsv:2")
    documents = build_corpus(kg, config, skips)
    questions = generate_questions(kg, documents, config, 0, skips)  # cyclic graph: no revisits
    assert questions and all(len(set(q.chain)) == len(q.chain) for q in questions)
    with pytest.raises(FileNotFoundError, match="kg file .*missing.tsv: not found"):
        load_kg(KGConfig(triples=str(tmp_path / "missing.tsv")), 0, Skips())
    with pytest.raises(ValueError, match="corpus: empty"):
        SearchIndex([])
    assert parse_agent_output("<search>q1</search> garbage <answer>Lyon</answer>") == \
        {"searches": ["q1"], "opens": [], "answer": "Lyon", "malformed": False}
    assert parse_agent_output("<open> d000012 </open>")["opens"] == ["d000012"]
    assert parse_agent_output("<search>unclosed")["malformed"] is True


def test_questions_per_call_keeps_every_actor_busy_on_small_builds():
    assert questions_per_call(12000, 2, 256) == 256
    assert questions_per_call(100, 2, 256) == 13  # 8 calls: 4 per actor
    assert questions_per_call(30, 2, 256) == 4
    assert questions_per_call(1, 2, 256) == 1
    assert questions_per_call(100, 2, 5) == 5


def test_builder_utilisation_is_busy_time_over_every_actors_whole_build():
    outcome = BuildOutcome({"tiered": 0, "random": 0}, [], num_actors=2, seconds=10.0, startup_seconds=2.0, busy_seconds=12.0)
    assert outcome.builder_utilisation == pytest.approx(0.6)
    assert BuildOutcome({}, [], num_actors=2).builder_utilisation == 0.0  # nothing ran: no division by zero


def test_rows_off_the_schema_raise_and_write_nothing(tmp_path: Path):
    good = {"source": "s", "input_messages": [{"role": "user", "content": "c"}], "label": "l",
            "metadata": {"extra_reward_info": {"question": "q", "rubrics": ["l"], "dataset_name": "d"}, "question_id": "q1",
                         "doc_ids": ["a"], "doc_tiers": ["gold"], "context_tokens": 3}}
    write_rows([good], tmp_path / "mode=tiered" / "part-q1.parquet")
    assert pq.read_table(tmp_path / "mode=tiered").to_pylist() == [good]
    with pytest.raises(pa.ArrowInvalid):
        write_rows([{**good, "metadata": {**good["metadata"], "context_tokens": "many"}}], tmp_path / "mode=tiered" / "part-q2.parquet")
    assert sorted(p.name for p in (tmp_path / "mode=tiered").iterdir()) == ["part-q1.parquet"]


def test_pipeline_writes_public_format_parquet_and_tracks_skips(workdir: Path):
    proc = rayworks(workdir, "run", "longtrace_data", "--set", "kg.num_questions=30", "num_actors=2",
                    "context.budget_tokens=700", f"output_dir={workdir / 'data'}", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (summary,) = result_lines(proc.stdout)
    tiered = pq.read_table(workdir / "data" / "mode=tiered").to_pylist()
    random_rows = pq.read_table(workdir / "data" / "mode=random").to_pylist()
    assert len(tiered) == len(random_rows) == summary["value"] == 30
    row = tiered[0]
    assert set(row) == {"source", "input_messages", "label", "metadata"}
    assert row["input_messages"][0]["role"] == "user"
    info = row["metadata"]["extra_reward_info"]
    assert set(info) == {"question", "rubrics", "dataset_name"} and info["rubrics"][-1] == row["label"]
    assert len(row["metadata"]["doc_tiers"]) == len(row["metadata"]["doc_ids"])
    assert {t for r in tiered for t in r["metadata"]["doc_tiers"]} >= {"gold", "tier1", "tier2"}
    # 30 questions went to the actors in calls of 4 (one Parquet file each), not one call of 256
    assert len(list((workdir / "data" / "mode=tiered").glob("*.parquet"))) == 8
    assert sorted(r["metadata"]["question_id"] for r in tiered) == sorted({r["metadata"]["question_id"] for r in tiered})
    assert not list((workdir / "data").rglob(".*partial"))  # every file renamed into place

    client = mlflow_client(workdir)
    run = client.get_run(summary["run_id"])
    metrics = run.data.metrics
    assert metrics["rows_tiered"] == 30
    # where the build's time went: start-up, then 2 actors busy for at most the rest of it
    assert 0 < metrics["build_startup_seconds"] < metrics["build_seconds"]
    assert 0 < metrics["builder_utilisation"] <= 1 - metrics["build_startup_seconds"] / metrics["build_seconds"] + 1e-6
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "samples.jsonl", "skipped.yaml", "tier_composition.png"} <= artifacts
    samples = Path(client.download_artifacts(run.info.run_id, "samples.jsonl", str(workdir))).read_text().splitlines()
    assert len(samples) == 6 and all(json.loads(line)["trajectory"]["steps"] for line in samples)

    # A budget no gold chain fits: every context skipped and counted by reason; the rows of the
    # earlier build in the same directory are gone, the tokenizer stays.
    proc = rayworks(workdir, "run", "longtrace_data", "--set", "kg.num_questions=30", "num_actors=2",
                    "context.budget_tokens=20", f"output_dir={workdir / 'data'}", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (summary,) = result_lines(proc.stdout)
    assert summary["value"] == 0 and summary["extra"]["skipped"]["gold documents exceed the token budget"] == 60
    assert not (workdir / "data" / "mode=tiered").exists() and (workdir / "data" / "tokenizer").is_dir()


def test_pipeline_names_a_missing_kg_file(workdir: Path):
    proc = rayworks(workdir, "run", "longtrace_data", "--set", "kg.triples=nope.tsv", timeout=120)
    assert proc.returncode == 2 and "kg file nope.tsv: not found" in proc.stderr
