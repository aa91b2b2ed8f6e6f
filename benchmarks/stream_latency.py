"""Stream latency: end-to-end latency of a chain of agents when every step streams downstream
as soon as it exists, against handing over whole chains (serial), on the same models and problems.

    python -m benchmarks.stream_latency [--depth 4] [--problems 20] [--solver DIR --checker DIR] [--nice-per-level 6]
                                        [--set key=value ...]

The agents have the machine to themselves here, so by default they run prioritised by their
distance from the question (`--nice-per-level 6`: each hop nearer the question weighs about 3.8x
in the kernel's scheduler, and the agent nearest it is always on the critical path; see
`actors.streamma.launch_agents`); 0 gives every agent the same priority.

Without `--solver/--checker`, one `streamma` run at its embedded default trains the role models
(`--set` overrides it) and the benchmark uses them. Each problem is solved alone (one in flight),
first under stream and then under serial, after one warm-up problem per protocol that is not
timed (nothing is cached between problems: every run writes every step). Reported: latency
p50/mean per protocol, the pipelining bound for the measured steps per agent S, depth D and
cores C (serial / stream <= min(C, D, S·D / (S + D - 1)): with C cores at most C agents compute at
once, and a chain cannot finish before its critical path of S + D - 1 steps), the latency-vs-depth
curve (1..6), and Ray's per-hop delay (a step's creation to its arrival at its reader) p50/p99.
The last line is the JSON record: stream p50 against serial p50; ratio = serial / stream.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile


def trained_models(overrides: list[str]) -> dict[str, str]:
    from pipelines import streamma
    from workloads import tracking
    from workloads.config import load_config

    config = load_config(streamma.Config, None, [*streamma.QUICKSTART, *overrides, "register_model=false", "depth_curve_max=0",
                                                 "eval_problems=20", "latency_problems=2"])
    summary = streamma.run(config)
    target = tempfile.mkdtemp(prefix="stream-latency-models-")
    return {role: tracking.client().download_artifacts(summary.run_id, role, target) for role in ("solver", "checker")}


def main(argv: list[str] | None = None) -> int:
    import ray

    from actors.streamma import launch_agents, solve_many
    from cluster.connect import connect
    from pipelines import streamma
    from pipelines.launch import quiet_libraries
    from pipelines.streamma import percentile
    from workloads.config import load_config
    from workloads.streamma.topology import chain, check_topology

    parser = argparse.ArgumentParser(prog="python -m benchmarks.stream_latency", description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--solver")
    parser.add_argument("--checker")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--nice-per-level", type=int, default=6,
                        help="upstream agents first (the machine is the agents' alone here); 0: equal priorities")
    args = parser.parse_args(argv)

    quiet_libraries(verbose=False)
    connect(None, None, log_to_driver=False)
    os.chdir(tempfile.mkdtemp(prefix="stream-latency-"))  # a scratch MLflow store and Ray results
    models = {"solver": args.solver, "checker": args.checker} if args.solver else trained_models(args.overrides)
    config = load_config(streamma.Config, None, args.overrides)
    _, _, held_out = streamma.splits(config)
    questions = [p.prompt for p in held_out[: args.problems + 1]]
    a = config.agents
    agents = launch_agents(check_topology(chain(6)), models, a.max_step_tokens, a.max_steps, a.temperature, config.seed,
                           nice_per_level=args.nice_per_level)
    cores = int(ray.cluster_resources().get("CPU", 1))

    def timed(depth: int, protocol: str, count: int) -> list[dict]:
        topology = check_topology(chain(depth))
        solve_many(agents, topology, protocol, questions[:1], 1)  # warm-up, not timed
        return solve_many(agents, topology, protocol, questions[1:count + 1], 1)

    runs = {protocol: timed(args.depth, protocol, args.problems) for protocol in ("stream", "serial")}
    latency = {p: [r["latency"] * 1000 for r in rs] for p, rs in runs.items()}
    steps_per_agent = statistics.fmean(len(st["steps"]) for r in runs["serial"] for st in r["agents"].values())
    s, d = steps_per_agent, args.depth
    bound = min(cores, d, s * d / (s + d - 1))
    hops = [h * 1000 for r in runs["stream"] for h in r["hops"]]
    print(f"\nchain of depth {d}, {len(latency['stream'])} held-out problems one at a time, {cores} CPUs, "
          f"{s:.1f} steps per agent on average, agents niced {args.nice_per_level} per level")
    print(f"{'protocol':<10}{'p50 ms':>10}{'mean ms':>10}{'first final token p50 ms':>28}")
    for protocol, values in latency.items():
        first = percentile([r["first_final_token"] * 1000 for r in runs[protocol]], 0.5)
        print(f"{protocol:<10}{percentile(values, 0.5):>10.1f}{statistics.fmean(values):>10.1f}{first:>28.1f}")
    ratio = percentile(latency["serial"], 0.5) / percentile(latency["stream"], 0.5)
    print(f"serial / stream: {ratio:.2f}; pipelining bound min(C={cores}, D={d}, S·D/(S+D-1)={s * d / (s + d - 1):.2f}) = {bound:.2f}")
    print(f"per-hop delay (step created -> arrived at its reader): p50 {percentile(hops, 0.5):.2f} ms, "
          f"p99 {percentile(hops, 0.99):.2f} ms over {len(hops)} hops")
    print(f"\n{'depth':<8}{'stream ms':>12}{'serial ms':>12}")
    for depth in range(1, 7):
        means = {p: statistics.fmean(r["latency"] * 1000 for r in timed(depth, p, min(5, args.problems))) for p in ("stream", "serial")}
        print(f"{depth:<8}{means['stream']:>12.1f}{means['serial']:>12.1f}")
    print(json.dumps({"benchmark": "stream_latency", "value": round(percentile(latency["stream"], 0.5), 2),
                      "baseline": round(percentile(latency["serial"], 0.5), 2), "ratio": round(ratio, 3),
                      "unit": f"ms end to end, chain of depth {d} (p50)"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
