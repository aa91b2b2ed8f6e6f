"""Adapter generation: the Code2LoRA hypernetwork writing a held-out repository's adapter versus
training that repository its own LoRA.

    python -m benchmarks.adapter_generation [--repeats 3]

The `code2lora` default: the bundled repositories, the committed base, the split of seed 0
(`six` held out whole). The static hypernetwork is trained first on the training repositories'
rows (`train.max_steps`, untimed). Then, for each held-out repository, timed from nothing cached:
- hypernetwork: open the bundle (a fresh clone), read its non-test Python files, encode them
  with the pipeline's encoder (the base's first `encoder_layers` layers), one hypernetwork
  forward -> the adapter;
- per-repository LoRA (what a user would otherwise do): a fresh peft LoRA trained with the
  pipeline's loop and step budget (`train.max_steps`) on the repository's own in-repo training
  rows (already mined: the mining, which the hypernetwork does not need, is not counted).
The repository's test functions are split, seeded, four fifths to train its LoRA and one fifth
on which both adapters are scored (exact match and target NLL). Threads: torch's default for this machine, the same for both arms.
The last line is the JSON record: adapters/s, hypernetwork against per-repository LoRA.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from pipelines import code2lora, code2lora_data
from workloads.code2lora.arms import LoRATrainee, StaticTrainee
from workloads.code2lora.base import encode_repository, encoder_sources
from workloads.code2lora.mining import file_rank, is_test_file, mine_files
from workloads.code2lora.repos import open_repository
from workloads.lm import load_lm
from workloads.sft import warmup_cosine
from workloads.strategies import LocalEngine


def mine(task: dict, scratch: Path, config: code2lora.Config) -> list[dict]:
    repo = open_repository(task["source"], scratch)
    sizes = {p: s for p, s in repo.files(task["head"]).items() if is_test_file(p)}
    return mine_files(repo.read(task["head"], sorted(sizes)), sizes, repo_id=task["repo_id"], commit_sha=task["head"],
                      commit_index=0, cross_repo_split=task["cross_repo_split"], held_out=task["held_out"],
                      seed=config.seed, config=config.mining, skips=Counter())


def train(trainee, rows: list[dict], names: list[str], tokenizer, config: code2lora.Config) -> None:
    data, where = code2lora.training_data(tokenizer, rows, names, config.prompt_tokens)
    engine = LocalEngine(trainee, lambda ps: torch.optim.AdamW([p for p in ps if p.requires_grad], lr=config.train.lr, weight_decay=0.0),
                         schedule=warmup_cosine(config.train.warmup_steps, config.train.max_steps),
                         max_grad_norm=config.train.max_grad_norm)
    code2lora.fit(trainee, engine, data, where, config, 0, 1, lambda *_: None)


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions of each arm (median reported)")
    args = parser.parse_args(argv)
    config = code2lora.Config()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        tasks = code2lora_data.plan_tasks(code2lora_data.Config(seed=config.seed), work / "plan", Counter(), {})
        names = [t["repo_id"] for t in tasks]
        rows = [row for task in tasks for row in mine(task, work / "mine", config)]
        base_dir, _ = code2lora.prepare_base(config, tasks, {"progress": None})
        base, tokenizer = load_lm(base_dir)
        encoder, _ = code2lora.encoder_or_error(config.encoder, base_dir, config.encoder_layers)  # loaded once, like a served generator's
        vectors = torch.stack([encode_repository(encoder, tokenizer, list(encoder_sources(open_repository(t["source"], work / "enc"), t["head"]).values()),
                                                 config.encoder_chunk_tokens) for t in tasks])
        hypernet = StaticTrainee(copy.deepcopy(base), config.hypernet, vectors, seed=config.seed)
        train(hypernet, [r for r in rows if code2lora.split_of(r) == "train"], names, tokenizer, config)

        table = []
        for task in (t for t in tasks if t["cross_repo_split"] == "test"):
            own = [r for r in rows if r["repo_id"] == task["repo_id"]]
            # Held-out test functions (a fifth, seeded): a repository such as six has one test file,
            # so its in-repo split (by file) holds nothing out.
            in_test = [file_rank(config.seed, task["repo_id"], r["test_file"] + "::" + r["test_function"]) < 0.2 for r in own]
            own_train = [r for r, test in zip(own, in_test) if not test]
            own_test = [r for r, test in zip(own, in_test) if test]

            def generate(repeat: int):
                repo = open_repository(task["source"], work / f"cold-{task['repo_id']}-{repeat}")  # a fresh clone: nothing cached
                texts = list(encoder_sources(repo, task["head"]).values())
                return hypernet.adapter(encode_repository(encoder, tokenizer, texts, config.encoder_chunk_tokens))

            def per_repo_lora():
                trainee = LoRATrainee(copy.deepcopy(base), config.hypernet, seed=config.seed)
                train(trainee, own_train, names, tokenizer, config)
                return trainee.adapter()

            generate(-1)  # warm-up: code paths and allocator, not the repository (each repeat clones afresh)
            hyper_runs = [timed(lambda: generate(i)) for i in range(args.repeats)]
            lora_runs = [timed(per_repo_lora) for _ in range(args.repeats)]
            scorer = LoRATrainee(copy.deepcopy(base), config.hypernet).model
            for arm, runs in (("hypernetwork", hyper_runs), ("per-repo LoRA", lora_runs)):
                _, hits, nll = code2lora.score_rows(scorer, tokenizer, runs[-1][1], own_test, config)
                table.append({"repo": task["repo_id"], "arm": arm, "seconds": statistics.median(s for s, _ in runs),
                              "em": sum(hits) / len(hits), "nll": sum(nll) / len(nll), "train_rows": len(own_train),
                              "test_rows": len(own_test)})

    print(f"\nadapter generation for held-out repositories; base {Path(base_dir).name} (encoder: its first "
          f"{config.encoder_layers or 'all'} layers), LoRA rank {config.hypernet.rank}, "
          f"per-repo LoRA {config.train.max_steps} steps x {config.train.batch_size} rows; median of {args.repeats}")
    print(f"{'repository':<12}{'arm':<16}{'s/adapter':>11}{'EM':>8}{'NLL':>8}{'train rows':>12}{'test rows':>11}")
    for row in table:
        print(f"{row['repo']:<12}{row['arm']:<16}{row['seconds']:>11.3f}{row['em']:>8.3f}{row['nll']:>8.3f}"
              f"{row['train_rows']:>12}{row['test_rows']:>11}")
    hyper = statistics.mean(r["seconds"] for r in table if r["arm"] == "hypernetwork")
    lora = statistics.mean(r["seconds"] for r in table if r["arm"] == "per-repo LoRA")
    print(f"\nhypernetwork {lora / hyper:.1f}x faster per adapter (target: >= 50x)")
    print(json.dumps({"benchmark": "adapter_generation", "value": round(1 / hyper, 4), "baseline": round(1 / lora, 4),
                      "ratio": round(lora / hyper, 2), "unit": "adapters/s"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
