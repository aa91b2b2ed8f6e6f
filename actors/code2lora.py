"""Ray Data workers of Code2LoRA's assertion mining.

`AssertionMiner` is a callable class for `Dataset.map_batches` over an actor pool: each call
takes a few (repository, commit) tasks, reads the commit's test files through git, mines their
assertions (`workloads.code2lora.mining`) and writes them as Parquet; for the evolving track it
also writes each mined commit's Python diff since the previously mined one. Out goes a small
report per call (rows written, skips with their reason), so one unreadable repository or file
never breaks a batch.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa

from workloads.caching import write_parquet
from workloads.code2lora.mining import MiningConfig, is_test_file, mine_files
from workloads.code2lora.repos import Repository, RepositoryError, open_repository
from workloads.config import from_dict

ROW_SCHEMA = pa.schema([("repo_id", pa.string()), ("commit_sha", pa.string()), ("commit_index", pa.int64()),
                        ("in_repo_split", pa.string()), ("cross_repo_split", pa.string()), ("test_file", pa.string()),
                        ("test_function", pa.string()), ("prefix", pa.string()), ("target", pa.string())])
COMMIT_SCHEMA = pa.schema([("repo_id", pa.string()), ("commit_sha", pa.string()), ("commit_index", pa.int64()),
                           ("since_sha", pa.string()), ("diff", pa.string()), ("diff_truncated", pa.bool_())])
SAMPLES_LOGGED = 5


class AssertionMiner:
    def __init__(self, output: str, scratch: str, seed: int, mining: dict, max_diff_chars: int):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        self.output, self.scratch, self.seed = Path(output), scratch, seed
        self.config = from_dict(MiningConfig, mining)
        self.max_diff_chars = max_diff_chars
        self.repositories: dict[str, Repository] = {}

    def repository(self, source: str) -> Repository:
        if source not in self.repositories:
            self.repositories[source] = open_repository(source, self.scratch)
        return self.repositories[source]

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Tasks in (columns: source, repo_id, commit_sha, since_sha, commit_index,
        cross_repo_split, held_out); rows out as `output/rows/part-<repo>-<index>.parquet` and
        diffs as `output/commits/...`; one `report` row back (JSON)."""
        began, skips, examples = time.time(), Counter(), {}
        rows, commits = [], []
        for task in batch.to_pylist():
            name = f"{task['repo_id']}@{task['commit_sha'][:10]}"
            try:
                repo = self.repository(task["source"])
                if task["since_sha"] is not None:  # evolving track: the diff since the last mined commit, tests or not
                    diff = repo.python_diff(task["commit_sha"], task["since_sha"] or None)
                    commits.append({**{k: task[k] for k in ("repo_id", "commit_sha", "commit_index", "since_sha")},
                                    "diff": diff[: self.max_diff_chars], "diff_truncated": len(diff) > self.max_diff_chars})
                sizes = {p: s for p, s in repo.files(task["commit_sha"]).items() if is_test_file(p)}
                if not sizes:
                    skips["commit without test files"] += 1
                    examples.setdefault("commit without test files", name)
                    continue
                readable = [p for p, size in sizes.items() if size <= self.config.max_file_bytes]
                before = Counter(skips)
                rows += mine_files(repo.read(task["commit_sha"], readable), sizes, repo_id=task["repo_id"],
                                   commit_sha=task["commit_sha"], commit_index=task["commit_index"],
                                   cross_repo_split=task["cross_repo_split"], held_out=task["held_out"], seed=self.seed,
                                   config=self.config, skips=skips)
                for reason in skips - before:
                    examples.setdefault(reason, name)
            except RepositoryError as exc:
                skips["unreadable repository or commit"] += 1
                examples.setdefault("unreadable repository or commit", str(exc)[:200])
        first = batch.slice(0, 1).to_pylist()[0]
        part = f"part-{first['repo_id']}-{first['commit_index']:06d}.parquet"
        if rows:
            write_parquet(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), self.output / "rows" / part)
        if commits:
            write_parquet(pa.Table.from_pylist(commits, schema=COMMIT_SCHEMA), self.output / "commits" / part)
        per_repo = Counter(row["repo_id"] for row in rows)
        report = {"rows": len(rows), "per_repo": per_repo, "commits": len(commits), "skipped": skips,
                  "examples": examples, "samples": rows[:SAMPLES_LOGGED], "seconds": time.time() - began}
        return pa.table({"report": [json.dumps(report)]})
