"""The on-disk format of LongTraceRL data: the public row schema, where each context mode's
rows live, atomic Parquet writes, and what a build reports (no Ray here)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pyarrow as pa

from workloads.caching import stable_hash, write_parquet

MODES = ("tiered", "random")


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


def contexts_dir(output: str | Path, mode: str) -> Path:
    """Where the rows of one context mode live: Hive-partitioned by `mode` under the output."""
    return Path(output) / f"mode={mode}"


def data_fingerprint(output: str | Path) -> str:
    """A hash of what a built data directory holds (every mode's rows in question order, and the
    tokenizer saved beside them), not of where it is or how its files are named: what trained on
    it is reusable wherever the same data is built again."""
    import pyarrow.dataset as pds

    records: list = []
    for mode in MODES:
        if contexts_dir(output, mode).is_dir():
            rows = pds.dataset(str(contexts_dir(output, mode)), format="parquet").to_table().to_pylist()
            records += [mode, *sorted(rows, key=lambda row: row["metadata"]["question_id"])]
    tokenizer = Path(output) / "tokenizer"
    if tokenizer.is_dir():
        records += [(f.name, f.read_text()) for f in sorted(tokenizer.iterdir()) if f.is_file()]
    return stable_hash(records)


def write_rows(rows: list[dict], path: Path) -> None:
    """One Parquet file of public rows, whole or not at all."""
    write_parquet(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), path)


@dataclasses.dataclass
class BuildOutcome:
    """What a build wrote (rows per mode) and sampled (the first built rows with the agent
    trajectories behind them, for MLflow), and its time: the whole build, its start-up (until
    the first builder call began: Ray Data planning, actor processes starting, imports, the
    index fetched) and the builders' busy time summed over actors."""

    rows: dict[str, int]
    samples: list[dict]
    num_actors: int
    seconds: float = 0.0
    startup_seconds: float = 0.0
    busy_seconds: float = 0.0

    @property
    def builder_utilisation(self) -> float:
        """The share of the actors' time over the whole build spent building rows."""
        return self.busy_seconds / (self.num_actors * self.seconds) if self.seconds > 0 else 0.0


def questions_per_call(num_questions: int, num_actors: int, batch_size: int) -> int:
    """`batch_size`, capped at a quarter of each actor's share of the questions: a small build
    still keeps every actor busy (100 questions on 2 actors: 13 per call, not one call of 100)."""
    return max(1, min(batch_size, math.ceil(num_questions / (4 * num_actors))))
