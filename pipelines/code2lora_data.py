"""Code2LoRA data: real repositories -> assertion-completion rows (Parquet), cached by their heads.

    python -m pipelines.code2lora_data [--set repos=DIR history_every=10]

Recipe: open every repository under `repos` (bundles or git checkouts; the default is the three
bundled under `data/code-repos/`), hold out `cross_repo_test` whole repositories (seeded), fix
each repository's in-repo held-out test files (seeded, by file), list the commits to mine
(HEAD, and with `history_every` every k-th commit that changes Python files: the evolving
track), then Ray Data maps the (repository, commit) tasks over a pool of `AssertionMiner`
actors that write `DIR/rows/*.parquet` (one row per assertion, fields in
`actors.code2lora.ROW_SCHEMA`) and `DIR/commits/*.parquet` (each mined commit's Python diff
since the previous one). Counts per split and repository and every skip reason go to MLflow.
The output is cached under `storage_path/code2lora-data/<key>`, the key hashing the
repositories' heads and this config, so an unchanged set of repositories is mined once.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar

from pipelines.launch import RunFields, RunSummary, ending_run, main_for, open_run, storage_path
from workloads.caching import cached_directory, is_complete, stable_hash
from workloads.code2lora.mining import MiningConfig, held_out_rank, is_test_file, mined_commits
from workloads.code2lora.repos import RepositoryError, open_repository, repository_sources
from workloads.config import ConfigError, require, to_dict

PIPELINE = "code2lora_data"
KEY_METRIC = "rows"
QUICKSTART: list[str] = []
BUNDLED_REPOS = Path(__file__).resolve().parents[1] / "data" / "code-repos"


@dataclasses.dataclass
class Config(RunFields):
    """Code2LoRA data: assertion-completion rows mined from real repositories' tests."""

    repos: str = ""  # a directory of *.bundle files and/or git checkouts (or one of them); empty: data/code-repos
    output_dir: str = ""  # empty: cached under storage_path/code2lora-data/<key of heads and config>
    cross_repo_test: int = 1  # whole repositories held out (the cross-repo test split), chosen by the seed
    history_every: int = 0  # evolving track: mine every k-th commit that changes Python files; 0: HEAD only
    max_diff_chars: int = 20_000  # a commit's Python diff is cut here (counted as truncated)
    num_actors: int = 2  # mining actors
    mining: MiningConfig = dataclasses.field(default_factory=MiningConfig)

    section: ClassVar[str] = "code2lora_data"

    def validate(self) -> None:
        require(self.cross_repo_test >= 0, "cross_repo_test", "must be >= 0")
        require(self.history_every >= 0, "history_every", "must be >= 0 (0: HEAD only)")
        require(self.max_diff_chars >= 1, "max_diff_chars", "must be >= 1")
        require(self.num_actors >= 1, "num_actors", "must be >= 1")


def plan_tasks(config: Config, scratch: Path, skips: Counter, examples: dict) -> list[dict]:
    """One task per (repository, commit) to mine, with the repository's splits fixed here."""
    try:
        sources = repository_sources(config.repos or BUNDLED_REPOS)
    except RepositoryError as exc:
        raise ConfigError(f"repos: {exc}") from None
    repositories = {}
    for source in sources:
        try:
            repo = open_repository(source, scratch)
            repositories[repo.name] = (repo, repo.head())
        except RepositoryError as exc:  # one bad repository is counted; the rest are mined
            skips["unreadable repository"] += 1
            examples.setdefault("unreadable repository", str(exc)[:200])
    if not repositories:
        raise ConfigError(f"repos: no readable repository in {config.repos or BUNDLED_REPOS} ({examples})")
    names = sorted(repositories)
    require(config.cross_repo_test < len(names), "cross_repo_test",
            f"must leave a training repository: {len(names)} readable repositories ({', '.join(names)})")
    held_out_repos = set(random.Random(config.seed).sample(names, config.cross_repo_test))
    tasks = []
    for name in names:
        repo, head = repositories[name]
        head_tests = [p for p in repo.files(head) if is_test_file(p)]
        held_out = held_out_rank(config.seed, name, head_tests, config.mining.in_repo_test_fraction)
        commits = mined_commits(repo.python_commits() if config.history_every else [], head, config.history_every)
        for index, commit in enumerate(commits):
            since = (commits[index - 1] if index else "") if config.history_every else None
            tasks.append({"source": str(repo.source), "repo_id": name, "commit_sha": commit, "since_sha": since,
                          "commit_index": index, "cross_repo_split": "test" if name in held_out_repos else "train",
                          "held_out": held_out, "head": head})
    return tasks


def mine(tasks: list[dict], output: Path, scratch: Path, config: Config) -> dict:
    """The tasks through a pool of `AssertionMiner` actors; their reports summed."""
    import ray

    from actors.code2lora import AssertionMiner

    reports = ray.data.from_items(tasks).map_batches(
        AssertionMiner, fn_constructor_kwargs={"output": str(output), "scratch": str(scratch), "seed": config.seed,
                                               "mining": to_dict(config.mining), "max_diff_chars": config.max_diff_chars},
        compute=ray.data.ActorPoolStrategy(size=config.num_actors), num_cpus=1, batch_format="pyarrow",
        batch_size=max(1, len(tasks) // (4 * config.num_actors)))
    total = {"rows": 0, "commits": 0, "per_repo": Counter(), "skipped": Counter(), "examples": {}, "samples": []}
    for line in reports.iter_rows():
        report = json.loads(line["report"])
        total["rows"] += report["rows"]
        total["commits"] += report["commits"]
        total["per_repo"].update(report["per_repo"])
        total["skipped"].update(report["skipped"])
        for reason, example in report["examples"].items():
            total["examples"].setdefault(reason, example)
        total["samples"] += report["samples"][: 5 - len(total["samples"])]
    return total


def run(config: Config, *, resume: bool = False, parent_run_id: str | None = None, train_callbacks=()) -> RunSummary:
    skips, examples = Counter(), {}
    scratch = Path(tempfile.gettempdir()) / "rayworks-code2lora-repos"  # bare clones of the bundles
    tasks = plan_tasks(config, scratch, skips, examples)
    key = stable_hash([to_dict(config.mining), config.seed, config.cross_repo_test, config.history_every,
                       config.max_diff_chars, sorted((t["repo_id"], t["head"]) for t in tasks)])
    output = Path(config.output_dir or Path(storage_path(config.storage_path)) / "code2lora-data" / key).resolve()
    run_record, _ = open_run(PIPELINE, config, resume=resume, parent_run_id=parent_run_id, data_hash=key)
    with ending_run(run_record):
        cached, started = is_complete(output), time.time()
        summary_file = "mining.json"

        def build(directory: Path) -> None:
            outcome = mine(tasks, directory, scratch, config)
            outcome["skipped"].update(skips)
            for reason, example in examples.items():
                outcome["examples"].setdefault(reason, example)
            mined_repos = {t["repo_id"] for t in tasks}
            for name in sorted(mined_repos - set(outcome["per_repo"])):
                outcome["skipped"]["repository without a minable assertion"] += 1
                outcome["examples"].setdefault("repository without a minable assertion", name)
            (directory / summary_file).write_text(json.dumps(outcome, indent=1))

        cached_directory(output, build)
        outcome = json.loads((output / summary_file).read_text())
        log_outcome(run_record, output, outcome, tasks, cached, time.time() - started)
    if not outcome["rows"]:
        raise ConfigError(f"repos: no assertion could be mined ({outcome['skipped']})")
    return RunSummary(PIPELINE, KEY_METRIC, float(outcome["rows"]), run_record.run_id, str(output),
                      extra={"repositories": len({t["repo_id"] for t in tasks}), "commits": len(tasks),
                             "cached": cached, "skipped": outcome["skipped"]})


def split_counts(output: Path) -> dict[str, int]:
    """Rows per split, read back from the Parquet written."""
    import pyarrow.dataset as pds

    if not (output / "rows").is_dir():
        return {}
    table = pds.dataset(output / "rows").to_table(columns=["cross_repo_split", "in_repo_split"])
    pairs = Counter(zip(table.column("cross_repo_split").to_pylist(), table.column("in_repo_split").to_pylist()))
    return {"rows_cross_repo_test": sum(n for (cross, _), n in pairs.items() if cross == "test"),
            "rows_in_repo_test": pairs[("train", "test")], "rows_train": pairs[("train", "train")]}


def log_outcome(run_record, output: Path, outcome: dict, tasks: list[dict], cached: bool, seconds: float) -> None:
    metrics = {"rows": outcome["rows"], "repositories": len({t["repo_id"] for t in tasks}), "commits_mined": len(tasks),
               "commit_diffs": outcome["commits"], "cached": float(cached), "seconds": seconds, **split_counts(output)}
    metrics.update({f"rows/{name}": n for name, n in outcome["per_repo"].items()})
    metrics.update({"skipped/" + re.sub(r"[^A-Za-z0-9_ -]+", " ", reason).strip(): n
                    for reason, n in outcome["skipped"].items()})
    run_record.log_metrics(metrics, step=0)
    run_record.log_yaml({"skipped": outcome["skipped"], "examples": outcome["examples"],
                         "held_out_repositories": sorted({t["repo_id"] for t in tasks if t["cross_repo_split"] == "test"}),
                         "heads": {t["repo_id"]: t["head"] for t in tasks}}, "mining.yaml")
    run_record.log_text("".join(json.dumps(sample) + "\n" for sample in outcome["samples"]), "samples.jsonl")


def main(argv: list[str] | None = None) -> int:
    return main_for(PIPELINE, Config, run, argv)


if __name__ == "__main__":
    from pipelines.code2lora_data import main as importable_main  # Ray pickles by reference

    sys.exit(importable_main())
