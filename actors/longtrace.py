"""Ray Data workers of LongTraceRL's data construction: a search agent plus a context builder.

`ContextBuilder` is a callable class for `Dataset.map_batches(..., concurrency=N)`: each actor
holds the shared BM25 index (built once by the driver, fetched from the object store), runs
the heuristic agent on each question and builds its tiered and random-distractor contexts.
Rows leave as JSON with a skip reason, so one bad question never breaks a batch.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pyarrow as pa
import ray

from workloads.config import from_dict
from workloads.longtrace.kg import Question
from workloads.endpoints import EndpointError
from workloads.longtrace.search import AgentConfig, ContextConfig, build_context, make_agent

MODES = ("tiered", "random")


def token_counter(tokenizer_path: str):
    """Token counts with the reader's tokenizer (a saved directory or hub id), memoised:
    the same documents are measured again for every context they are candidates for.

    A saved fast tokenizer (`tokenizer.json`) is counted by the `tokenizers` backend directly:
    the same ids as the transformers wrapper without its import (seconds per actor start) or
    its per-call overhead."""
    saved = Path(tokenizer_path) / "tokenizer.json" if tokenizer_path else None
    if saved is not None and saved.is_file():
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(saved))
    else:
        from workloads.tiny_lm import build_tokenizer, load_tokenizer

        backend = (load_tokenizer(tokenizer_path) if tokenizer_path else build_tokenizer()).backend_tokenizer

    @functools.lru_cache(maxsize=1 << 20)
    def count(text: str) -> int:
        return len(backend.encode(text, add_special_tokens=False).ids)

    return count


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
# Built rows also say which context they are, why they were skipped ("" when built; the row
# fields are then null) and the agent's trajectory (JSON), for the counts and samples.
BUILT_SCHEMA = pa.schema([*ROW_SCHEMA, ("mode", pa.string()), ("skip_reason", pa.string()), ("trajectory", pa.string())])


class ContextBuilder:
    def __init__(self, index_ref: list, agent: dict, context: dict, tokenizer: str, seed: int):
        """`index_ref` is `[ObjectRef]`: wrapped in a list so Ray passes the reference instead
        of resolving it, and every actor fetches the one shared copy from the object store."""
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        (index,) = ray.get(index_ref)
        self.agent = make_agent(index, from_dict(AgentConfig, agent))
        self.documents = {d.id: d for d in index.documents}
        self.doc_ids = list(self.documents)
        self.context = from_dict(ContextConfig, context)
        self.count_tokens = token_counter(tokenizer)
        self.seed = seed

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for raw in batch.column("question").to_pylist():
            question = Question(**json.loads(raw))
            try:
                trajectory = self.agent.run(question)
            except EndpointError as exc:  # one unreachable question, not a lost batch
                reason = f"search agent endpoint failed: {str(exc)[:120]}"
                rows.extend({"mode": mode, "skip_reason": reason, "trajectory": "{}"} for mode in MODES)
                continue
            trajectory_json = json.dumps({"steps": [vars(s) for s in trajectory.steps], "answer": trajectory.answer,
                                          "cited": trajectory.cited})
            for mode in MODES:
                row = build_context(question, trajectory, self.documents, self.count_tokens, self.context, self.seed, mode,
                                    self.doc_ids)
                reason = "" if row else "gold documents exceed the token budget"
                rows.append({**(row or {}), "mode": mode, "skip_reason": reason, "trajectory": trajectory_json})
        return pa.Table.from_pylist(rows, schema=BUILT_SCHEMA)


def built_rows(built, mode: str):
    """The rows of one context mode that were built, as the public LongTraceRL columns."""
    from ray.data.expressions import col

    return built.filter(expr=(col("mode") == mode) & (col("skip_reason") == "")).select_columns(ROW_SCHEMA.names)
