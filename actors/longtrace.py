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

import pyarrow as pa
import ray

from workloads.config import from_dict
from workloads.longtrace.kg import Question
from workloads.endpoints import EndpointError
from workloads.longtrace.search import AgentConfig, ContextConfig, build_context, make_agent

MODES = ("tiered", "random")


def token_counter(tokenizer_path: str):
    """Token counts with the reader's tokenizer (a saved directory or hub id), memoised:
    the same documents are measured again for every context they are candidates for."""
    if not tokenizer_path:
        from workloads.tiny_lm import build_tokenizer

        tokenizer = build_tokenizer()
    else:
        from workloads.tiny_lm import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_path)
    @functools.lru_cache(maxsize=1 << 20)
    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    return count


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
        rows = {"mode": [], "row_json": [], "skip_reason": [], "trajectory_json": []}
        for raw in batch.column("question").to_pylist():
            question = Question(**json.loads(raw))
            try:
                trajectory = self.agent.run(question)
            except EndpointError as exc:  # one unreachable question, not a lost batch
                for mode in MODES:
                    rows["mode"].append(mode)
                    rows["row_json"].append("")
                    rows["skip_reason"].append(f"search agent endpoint failed: {str(exc)[:120]}")
                    rows["trajectory_json"].append("{}")
                continue
            trajectory_json = json.dumps({"steps": [vars(s) for s in trajectory.steps], "answer": trajectory.answer,
                                          "cited": trajectory.cited})
            for mode in MODES:
                row = build_context(question, trajectory, self.documents, self.count_tokens, self.context, self.seed, mode,
                                    self.doc_ids)
                rows["mode"].append(mode)
                rows["row_json"].append(json.dumps(row) if row else "")
                rows["skip_reason"].append("" if row else "gold documents exceed the token budget")
                rows["trajectory_json"].append(trajectory_json)
        return pa.table(rows)


def decode_rows(batch: pa.Table, mode: str) -> pa.Table:
    """The built rows of one mode as the public LongTraceRL columns (input_messages, label,
    metadata, ...); a whole batch is filtered at once (no per-row Python filter)."""
    import pyarrow.compute as pc

    keep = pc.and_(pc.equal(batch.column("mode"), mode), pc.equal(batch.column("skip_reason"), ""))
    texts = batch.filter(keep).column("row_json").to_pylist()
    if not texts:
        return pa.table({"source": pa.array([], pa.string())})
    return pa.Table.from_pylist([json.loads(text) for text in texts])
