"""Ray Data workers of LongTraceRL's data construction: a search agent plus a context builder.

`ContextBuilder` is a callable class for `Dataset.map_batches` over an actor pool: each actor
holds the shared BM25 index (built once by the driver, fetched from the object store), runs
the reading agent (`workloads.longtrace.search.ReadingAgent`) on each question and builds its tiered and random-distractor contexts.
Each call writes its rows as Parquet, one file per context mode, and returns a small report
of what it wrote and skipped (with the reason), so one bad question never breaks a batch.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pyarrow as pa
import ray

from workloads.config import from_dict
from workloads.longtrace.format import MODES, BuildOutcome, contexts_dir, questions_per_call, write_rows
from workloads.longtrace.kg import Document, Question, Skips
from workloads.endpoints import EndpointError
from workloads.longtrace.search import (
    AgentConfig,
    ContextConfig,
    TokenCounter,
    Unbuildable,
    build_context,
    document_section,
    make_agent,
)

SAMPLES_LOGGED = 6  # built rows, with their trajectories, logged to MLflow


def reader_tokenizer(tokenizer_path: str):
    """The reader's tokenizer backend (`tokenizers.Tokenizer`) from a saved directory or hub id.
    A saved fast tokenizer (`tokenizer.json`) is read by the `tokenizers` backend directly: the
    same ids as the transformers wrapper, without its per-call overhead."""
    saved = Path(tokenizer_path) / "tokenizer.json" if tokenizer_path else None
    if saved is not None and saved.is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(saved))
    from workloads.lm import build_tokenizer, load_tokenizer

    return (load_tokenizer(tokenizer_path) if tokenizer_path else build_tokenizer()).backend_tokenizer


def section_tokens(documents: list[Document], tokenizer_path: str) -> dict[str, int]:
    """Every document's context-section length in the reader's tokens, measured once per corpus
    by the driver in one batched call: the builders share it with the index instead of each
    re-tokenising the documents it meets (with random filler, nearly all of them)."""
    encoded = reader_tokenizer(tokenizer_path).encode_batch([document_section(d) for d in documents],
                                                           add_special_tokens=False)
    return {d.id: len(e.ids) for d, e in zip(documents, encoded)}


class ContextBuilder:
    def __init__(self, corpus_refs: list, agent: dict, context: dict, seed: int, output: str, tokenizer: str,
                 dataset_name: str):
        """`corpus_refs` is `[index ref, section tokens ref]` (`SearchIndex`, `section_tokens`):
        wrapped in a list so Ray passes the references instead of resolving them, and every
        actor fetches the one shared copy of each from the object store."""
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        index, self.section_tokens = ray.get(corpus_refs)
        self.agent = make_agent(index, from_dict(AgentConfig, agent))
        self.documents = {d.id: d for d in index.documents}
        self.doc_ids = list(self.documents)
        self.context = from_dict(ContextConfig, context)
        self.seed, self.output, self.samples_sent, self.dataset_name = seed, Path(output), 0, dataset_name
        self.tokens = TokenCounter(reader_tokenizer(tokenizer))

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Questions in; their built rows written as one Parquet file per mode
        (`output/mode=*/part-<first question id>.parquet`). Out goes one row, `report`: JSON of
        the rows written per mode, every skip as [reason, question id], this actor's first
        samples (built rows with their trajectories), and when the call began and how long it
        ran (epoch seconds: the build's start-up and busy time). Rows leave as files, not
        blocks: they are nearly all the bytes, and writing them here spares a trip through the
        object store to a separate writer."""
        began = time.time()
        rows, skipped, samples = {mode: [] for mode in MODES}, [], []
        questions = [Question(**json.loads(raw)) for raw in batch.column("question").to_pylist()]
        for question in questions:
            try:
                trajectory = self.agent.run(question)
            except EndpointError as exc:  # one unreachable question, not a lost batch
                skipped.extend((f"search agent endpoint failed: {str(exc)[:120]}", question.id) for _ in MODES)
                continue
            for mode in MODES:
                try:
                    row = build_context(question, trajectory, self.documents, self.section_tokens, self.context, self.seed,
                                        mode, self.tokens, self.doc_ids, self.dataset_name)
                except Unbuildable as exc:
                    skipped.append((str(exc), question.id))
                    continue
                rows[mode].append(row)
                if self.samples_sent < SAMPLES_LOGGED:
                    self.samples_sent += 1
                    samples.append({"row": row, "trajectory": {"steps": [vars(s) for s in trajectory.steps],
                                                               "answer": trajectory.answer, "cited": trajectory.cited}})
        for mode, built in rows.items():
            if built:
                write_rows(built, contexts_dir(self.output, mode) / f"part-{questions[0].id}.parquet")
        report = {"rows": {mode: len(built) for mode, built in rows.items()}, "skipped": skipped, "samples": samples,
                  "began": began, "seconds": time.time() - began}
        return pa.table({"report": [json.dumps(report)]})


def write_contexts(questions: list[Question], corpus_refs: list, output: Path, *, agent: dict, context: dict,
                   seed: int, num_actors: int, batch_size: int, skips: Skips, tokenizer: str,
                   dataset_name: str) -> BuildOutcome:
    """Questions -> a pool of `ContextBuilder` actors -> Parquet under `output/mode=*/`, in one
    streaming pass: the builders write their files as they go, and only their reports come
    back. `corpus_refs`: [index ref, section tokens ref], shared by the builders; `batch_size`
    goes through `questions_per_call`; every skipped question is counted into `skips`."""
    import shutil

    submitted = time.time()
    for mode in MODES:
        shutil.rmtree(contexts_dir(output, mode), ignore_errors=True)  # no stale rows of an earlier build
    dataset = ray.data.from_items([{"question": json.dumps(vars(q))} for q in questions])  # flat dataclasses
    reports = dataset.map_batches(
        ContextBuilder,
        fn_constructor_kwargs={"corpus_refs": corpus_refs, "agent": agent, "context": context, "seed": seed,
                               "output": str(output), "tokenizer": tokenizer, "dataset_name": dataset_name},
        compute=ray.data.ActorPoolStrategy(size=num_actors), num_cpus=1, batch_format="pyarrow",
        batch_size=questions_per_call(len(questions), num_actors, batch_size),
    )
    outcome, first_call = BuildOutcome(dict.fromkeys(MODES, 0), [], num_actors), math.inf
    for line in reports.iter_rows():
        report = json.loads(line["report"])
        first_call = min(first_call, report["began"])
        outcome.busy_seconds += report["seconds"]
        for mode, count in report["rows"].items():
            outcome.rows[mode] += count
        for reason, question_id in report["skipped"]:
            skips.add(reason, question_id)
        outcome.samples.extend(report["samples"][: SAMPLES_LOGGED - len(outcome.samples)])
    outcome.seconds = time.time() - submitted
    outcome.startup_seconds = min(first_call - submitted, outcome.seconds)  # no call at all: all start-up
    return outcome
