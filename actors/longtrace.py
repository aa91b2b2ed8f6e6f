"""Ray Data workers of LongTraceRL's data construction: a search agent plus a context builder.

`ContextBuilder` is a callable class for `Dataset.map_batches(..., concurrency=N)`: each actor
holds the shared BM25 index (built once by the driver, fetched from the object store), runs
the heuristic agent on each question and builds its tiered and random-distractor contexts.
Built rows leave as typed Arrow, ready for a Parquet write partitioned by context mode; a
skipped question goes to the `BuildReport` actor with its reason, so one bad question never
breaks a batch.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pyarrow as pa
import ray

from workloads.config import from_dict
from workloads.longtrace.kg import Document, Question, Skips
from workloads.endpoints import EndpointError
from workloads.longtrace.search import AgentConfig, ContextConfig, build_context, document_section, make_agent

MODES = ("tiered", "random")
SAMPLES_LOGGED = 6  # built rows, with their trajectories, logged to MLflow


def section_tokens(documents: list[Document], tokenizer_path: str) -> dict[str, int]:
    """Every document's context-section length in the reader's tokens (a saved directory or hub
    id), measured once per corpus by the driver: the builders share it with the index instead of
    each re-tokenising the documents it meets (with random filler, nearly all of them).

    A saved fast tokenizer (`tokenizer.json`) is read by the `tokenizers` backend directly, one
    batched call: the same ids as the transformers wrapper, without its per-call overhead."""
    saved = Path(tokenizer_path) / "tokenizer.json" if tokenizer_path else None
    if saved is not None and saved.is_file():
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(saved))
    else:
        from workloads.tiny_lm import build_tokenizer, load_tokenizer

        backend = (load_tokenizer(tokenizer_path) if tokenizer_path else build_tokenizer()).backend_tokenizer
    encoded = backend.encode_batch([document_section(d) for d in documents], add_special_tokens=False)
    return {d.id: len(e.ids) for d, e in zip(documents, encoded)}


# The public LongTraceRL row (what `build_context` returns), typed once so that every block,
# however few rows it has (or however empty their rubric lists), has the same schema.
ROW_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("input_messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("label", pa.string()),
    ("metadata", pa.struct([
        ("extra_reward_info", pa.struct([("question", pa.string()), ("rubrics", pa.list_(pa.string())),
                                         ("dataset_name", pa.string())])),
        ("question_id", pa.string()),
        ("doc_ids", pa.list_(pa.string())),
        ("doc_tiers", pa.list_(pa.string())),
        ("context_tokens", pa.int64()),
    ])),
])
# Built rows carry their context mode, the column the output is partitioned by.
BUILT_SCHEMA = pa.schema([*ROW_SCHEMA, ("mode", pa.string())])


def contexts_dir(output: str | Path, mode: str) -> Path:
    """Where the rows of one context mode live: Hive-partitioned by `mode` under the output."""
    return Path(output) / f"mode={mode}"


@ray.remote(num_cpus=0)
class BuildReport:
    """What the context builders skipped, by reason (with question ids as examples), and the
    first few built rows with the agent trajectories behind them: the pipeline's MLflow report,
    kept out of the Parquet rows."""

    def __init__(self):
        self.skips, self.samples = Skips(), []

    def add(self, skipped: list[tuple[str, str]], samples: list[dict]) -> None:
        for reason, question_id in skipped:
            self.skips.add(reason, question_id)
        self.samples.extend(samples[: SAMPLES_LOGGED - len(self.samples)])

    def result(self) -> tuple[dict, dict, list[dict]]:
        return dict(self.skips), dict(self.skips.examples), self.samples


class ContextBuilder:
    def __init__(self, corpus_refs: list, agent: dict, context: dict, seed: int, report):
        """`corpus_refs` is `[index ref, section tokens ref]` (`SearchIndex`, `section_tokens`):
        wrapped in a list so Ray passes the references instead of resolving them, and every
        actor fetches the one shared copy of each from the object store.
        `report`: a `BuildReport` actor told about every skip and the first samples."""
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        index, self.section_tokens = ray.get(corpus_refs)
        self.agent = make_agent(index, from_dict(AgentConfig, agent))
        self.documents = {d.id: d for d in index.documents}
        self.doc_ids = list(self.documents)
        self.context = from_dict(ContextConfig, context)
        self.seed, self.report, self.samples_sent = seed, report, 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Questions in; the built rows of both modes out (the public columns plus `mode`)."""
        rows, skipped, samples = [], [], []
        for raw in batch.column("question").to_pylist():
            question = Question(**json.loads(raw))
            try:
                trajectory = self.agent.run(question)
            except EndpointError as exc:  # one unreachable question, not a lost batch
                skipped.extend((f"search agent endpoint failed: {str(exc)[:120]}", question.id) for _ in MODES)
                continue
            for mode in MODES:
                row = build_context(question, trajectory, self.documents, self.section_tokens, self.context, self.seed, mode,
                                    self.doc_ids)
                if row is None:
                    skipped.append(("gold documents exceed the token budget", question.id))
                    continue
                rows.append({**row, "mode": mode})
                if self.samples_sent + len(samples) < SAMPLES_LOGGED:
                    samples.append({"row": row, "trajectory": {"steps": [vars(s) for s in trajectory.steps],
                                                               "answer": trajectory.answer, "cited": trajectory.cited}})
        if skipped or samples:
            ray.get(self.report.add.remote(skipped, samples))  # before the batch counts as done
            self.samples_sent += len(samples)
        return pa.Table.from_pylist(rows, schema=BUILT_SCHEMA)


def questions_per_call(num_questions: int, num_actors: int, batch_size: int) -> int:
    """`batch_size`, capped at a quarter of each actor's share of the questions: a small build
    still keeps every actor busy (100 questions on 2 actors: 13 per call, not one call of 100)."""
    return max(1, min(batch_size, math.ceil(num_questions / (4 * num_actors))))


def write_contexts(questions: list[Question], corpus_refs: list, output: Path, *, agent: dict, context: dict,
                   seed: int, num_actors: int, batch_size: int, report) -> dict[str, int]:
    """Questions -> a pool of `ContextBuilder` actors -> Parquet under `output/mode=*/`, in one
    streaming pass (nothing is held in the object store beyond the blocks in flight).
    `corpus_refs`: [index ref, section tokens ref], shared by the builders; `report` is the
    `BuildReport` actor the builders tell about skips and samples; `batch_size` goes through
    `questions_per_call`. Returns the rows written per mode."""
    import shutil

    import pyarrow.dataset as pds

    for mode in MODES:
        shutil.rmtree(contexts_dir(output, mode), ignore_errors=True)  # no stale rows of an earlier build
    batch_size = questions_per_call(len(questions), num_actors, batch_size)
    dataset = ray.data.from_items([{"question": json.dumps(vars(q))} for q in questions])  # flat dataclasses
    dataset.map_batches(
        ContextBuilder,
        fn_constructor_kwargs={"corpus_refs": corpus_refs, "agent": agent, "context": context, "seed": seed,
                               "report": report},
        concurrency=num_actors, batch_size=batch_size, batch_format="pyarrow", num_cpus=1,
    ).write_parquet(
        # Writing a block takes milliseconds next to building it: a few zero-CPU writers stream
        # alongside the builders instead of queueing every write behind them until they finish.
        str(output), partition_cols=["mode"], ray_remote_args={"num_cpus": 0}, concurrency=max(1, num_actors // 4),
    )
    written = {mode: contexts_dir(output, mode) for mode in MODES}
    return {mode: pds.dataset(path).count_rows() if path.is_dir() else 0 for mode, path in written.items()}
