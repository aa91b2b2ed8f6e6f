"""Repair tokens: generated tokens per solved problem, TRI repair against regenerating the suffix
from the first failing step.

    python -m benchmarks.repair_tokens [--seeds 3] [--set key=value ...]

Each seed is one `tri` run on the `python` step task (BENCHMARK_SETTINGS; `--set` overrides
them, as `rayworks run tri --set` does): its draft model writes every held-out problem once; from those same drafts, TRI
(infill from the verified prefix to the milestone, regenerate when there is none) and the
baseline (the same draft model regenerates the suffix from the first failure) each get
`repair.rounds` rounds. Both count every generated token, drafts included, and prompt tokens
apart; the summary also gives repair tokens (after the draft) per problem the repair fixed,
and TRI's paired differences from regeneration over the seeds (`workloads.comparison`, as
`rayworks compare` reports them).
The last line is the JSON record: generated tokens per solved problem over all seeds, TRI
against regeneration; the ratio is regeneration / TRI (above 1: TRI spends fewer).

Why the `python` family and not the quickstart's unit chains: a unit step restates the previous
value, so a draft's error carries into every later step and almost no failed draft has a later
step that verifies (a milestone); most of the units drafts' failures are also at the end (a
chain stopped early or walked past its target). Program steps read earlier variables, so a
later step verifies whenever it is itself right: the case TRI is for. The tiny model needs the
longer budgets below to learn programs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from pipelines import tri
from workloads.comparison import paired_differences
from workloads.config import load_config

COLUMNS = ("accuracy_before", "accuracy_after", "repair_success", "generated_tokens_per_solved",
           "repair_tokens_per_problem", "prompt_tokens_per_problem", "infills_per_problem", "fallbacks_per_problem")


# the python step task, two ranks of 16 as the quickstart, the budgets it needs (about 150 s a seed on 2 cores)
BENCHMARK_SETTINGS = ["traces.task=python", "train.num_workers=2", "train.batch_size=16", "train.draft_steps=400",
                      "train.infiller_steps=600"]


def main(argv: list[str] | None = None) -> int:
    from cluster.connect import connect
    from pipelines.launch import quiet_libraries

    parser = argparse.ArgumentParser(prog="python -m benchmarks.repair_tokens", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    quiet_libraries(verbose=False)
    connect(None, None, log_to_driver=False)
    os.chdir(tempfile.mkdtemp(prefix="repair-tokens-"))  # a scratch MLflow store and Ray results
    rows, totals = [], {method: {"generated": 0.0, "solved": 0.0, "repair": 0.0, "repaired": 0.0} for method in tri.METHODS}
    for seed in range(args.seeds):
        # both methods on the same drafts, whatever --set says: the comparison is the benchmark
        config = load_config(tri.Config, None, [*BENCHMARK_SETTINGS, *args.overrides, f"seed={seed}", "register_model=false",
                                                "repair.methods=tri,regenerate"])
        extra = tri.run(config).extra
        for method in tri.METHODS:
            rows.append((seed, method, *(extra[f"{method}/{column}"] for column in COLUMNS)))
            problems = len(tri.splits(config)[3][: config.repair.problems or None])
            totals[method]["generated"] += extra[f"{method}/generated_tokens_per_problem"] * problems
            totals[method]["solved"] += extra[f"{method}/accuracy_after"] * problems
            totals[method]["repair"] += extra[f"{method}/repair_tokens_per_problem"] * problems
            totals[method]["repaired"] += (extra[f"{method}/accuracy_after"] - extra[f"{method}/accuracy_before"]) * problems

    header = ("seed", "method", *COLUMNS)
    widths = [max(len(header[i]), *(len(f"{row[i]:.3f}" if isinstance(row[i], float) else str(row[i])) for row in rows))
              for i in range(len(header))]
    print("\n" + "  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join((f"{cell:.3f}" if isinstance(cell, float) else str(cell)).ljust(w) for cell, w in zip(row, widths)))
    print("\nover all seeds: " + "; ".join(
        f"{m}: {t['generated'] / t['solved']:.1f} generated tokens per solved problem, "
        f"{t['repair'] / max(t['repaired'], 1e-9):.1f} repair tokens per repaired problem" for m, t in totals.items() if t["solved"]))
    # TRI and regeneration repair the same drafts of the same seed: a pair per seed
    print("\nTRI minus regeneration, paired over seeds (mean, 95% interval):")
    for column in ("accuracy_after", "repair_tokens_per_problem", "generated_tokens_per_solved"):
        by_method = {m: [row[2 + COLUMNS.index(column)] for row in rows if row[1] == m] for m in tri.METHODS}
        difference = paired_differences(by_method, "regenerate")["tri"]
        print(f"  {column}: {difference.mean:+.3f} [{difference.ci95[0]:+.3f}, {difference.ci95[1]:+.3f}] "
              f"over {difference.pairs} seeds: {difference.verdict}")
    per_solved = {m: t["generated"] / t["solved"] if t["solved"] else float("inf") for m, t in totals.items()}
    ratio = per_solved["regenerate"] / per_solved["tri"] if per_solved["tri"] != float("inf") else 0.0
    print(json.dumps({"benchmark": "repair_tokens", "value": round(per_solved["tri"], 2),
                      "baseline": round(per_solved["regenerate"], 2), "ratio": round(ratio, 3),
                      "unit": "generated tokens per solved problem"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
