"""StreamMA: streaming multi-agent reasoning. Agents in a Chain, Tree or Graph each write
reasoning steps ending with an end-of-step marker; under `stream` every step goes downstream as
soon as it exists, under `serial` an agent hands over its whole chain when done, and `single`
is one agent.

    python -m pipelines.streamma [--config FILE] [--set key=value ...]
    rayworks compare streamma --vary protocol=stream,serial,single --seeds 3

Recipe:
1. problems: a step-structured task family (`workloads.tri.traces`, `traces.task`) and the role
   data of each role (`workloads.streamma.agents`): the solver learns the task's traces, the
   checker re-derives each step from the question with upstream steps as evidence, some of
   them wrong, received in every amount from "as many as it has written" to "all".
2. train (one Ray Train run, `train.num_workers` ranks, TRL's SFTTrainer): the solver, then
   the checker warm-started from it. Rank 0 saves both; the ranks' weights are fingerprinted.
   The last `validation_problems` training problems are kept out of the role data; the
   trained solver -> checker chain solves them in process (`val_accuracy`, tune's metric).
   Given `solver_model` and `checker_model` (directories or hub ids), training is skipped;
   trained models are cached by the training settings and the seed (under `storage_path`), so
   the arms of a comparison that share a seed train once.
3. checker check (in process): on held-out problems whose upstream trace is corrupted, how
   often the checker's own trace is right anyway (`checker/corrected_rate`), against the
   upstream's 0: what shows it re-derives rather than copies.
4. agents (`actors.streamma`, one Ray actor each) in the configured topology, run under
   `protocol` on the held-out problems: accuracy, accuracy of steps by position (the solver's
   and the sink's), tokens; then one problem at a time for latency: end to end, time to the
   final agent's first token, and Ray's per-hop delay (a step's creation to its arrival).
5. the latency-vs-depth curve: chains of depth 1..`depth_curve_max` under stream and serial on
   the same problems (`latency_depth.png`).
6. MLflow: metrics, samples, the curve; registered models `rayworks-streamma-solver` and
   `rayworks-streamma-checker`.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

from actors.streamma import PROTOCOLS
from pipelines import trl_stages
from pipelines.launch import (
    ProgressLines,
    RunFields,
    RunSummary,
    Workers,
    check_ranks_in_sync,
    ending_run,
    main_for,
    open_run,
    say,
    storage_path,
    train_run_config,
    train_worker_context,
)
from workloads import tracking
from workloads.caching import cached_directory, stable_hash
from workloads.config import from_dict, require, to_dict
from workloads.lm import TinyLMConfig
from workloads.streamma.topology import TopologyConfig, build_topology
from workloads.tri.traces import TraceConfig

PIPELINE = "streamma"
REGISTERED = {"solver": "rayworks-streamma-solver", "checker": "rayworks-streamma-checker"}
KEY_METRIC = "accuracy"
TUNE_METRIC = "val_accuracy"  # searches select on validation problems (cut from training), never the held-out ones
THREATS = (
    "one synthetic step-task family per run; the checker's training errors are digit corruptions, not the solver's own mistakes",
    "latency is measured on one machine whose cores the agents share: with more agents than cores, streaming's overlap is capped",
)
# Two ranks that must end identical with the default global batch; the default chain reads one
# upstream per agent, so the checker trains on one (shorter rows); a smaller evaluation.
QUICKSTART = ["train.num_workers=2", "train.batch_size=16", "train.max_upstreams=1", "eval_problems=60", "latency_problems=5",
              "depth_curve_problems=2"]


@dataclasses.dataclass
class TrainConfig(Workers):
    """The Ray Train workers and the two SFT stages (solver, then checker)."""

    batch_size: int = 32  # examples per worker per step
    lr: float = 3e-3  # peak learning rate, both stages
    warmup_steps: int = 40  # linear warm-up, then cosine decay
    weight_decay: float = 0.01  # AdamW's
    max_grad_norm: float = 1.0  # gradient clipping
    solver_steps: int = 300  # solver SFT steps
    checker_steps: int = 150  # checker SFT steps (it starts from the solver)
    max_upstreams: int = 2  # checker role data read 1..this many upstreams (a merge in a tree reads `topology.width`)
    gradient_checkpointing: bool = False  # TRL's SFT default is on; it trades compute for memory a tiny model does not need

    section: ClassVar[str] = "train"

    def validate(self) -> None:
        super().validate()
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.lr > 0, "lr", "must be > 0")
        require(self.solver_steps >= 1 and self.checker_steps >= 1, "solver_steps", "solver_steps and checker_steps must be >= 1")
        require(1 <= self.max_upstreams <= 8, "max_upstreams", "must be in 1..8")


@dataclasses.dataclass
class AgentConfig:
    """How every agent writes."""

    max_step_tokens: int = 32  # a step without the end-of-step marker is cut here (and counted as truncated)
    max_steps: int = 8  # steps per agent at most (an agent also stops at its answer line)
    temperature: float = 0.0  # 0: greedy
    in_flight: int = 4  # problems run at once when measuring accuracy (latency is measured one at a time)
    endpoint: str = ""  # an OpenAI-compatible base URL: the agents write through it, `solver_model`/`checker_model` name its models
    nice_per_level: int = 0  # > 0: upstream agents write at higher priority (cores the agents alone share; see launch_agents)

    section: ClassVar[str] = "agents"

    def validate(self) -> None:
        require(self.max_step_tokens >= 1, "max_step_tokens", "must be >= 1")
        require(self.max_steps >= 1, "max_steps", "must be >= 1")
        require(self.temperature >= 0, "temperature", "must be >= 0")
        require(self.in_flight >= 1, "in_flight", "must be >= 1")
        require(0 <= self.nice_per_level <= 19, "nice_per_level", "must be in 0..19")


def default_model() -> TinyLMConfig:
    # Two layers as TRI's draft model. 100 BPE merges learned on the role data, none across a line
    # (an agent always continues from a line's end), write a step in about a quarter of the
    # tokens bytes take: training and every agent's step are that much cheaper.
    return TinyLMConfig(num_layers=2, max_positions=384, bpe_merges=100, bpe_within_lines=True)


def default_traces() -> TraceConfig:
    # unit chains of 3-5 conversions (4-6 steps with the answer line): powers of ten, and bytes to
    # bits (x8), whose long late numbers make late steps the unreliable ones (the paper's premise)
    return TraceConfig(task="units", chains="metric,volume,mass,data", min_steps=3, max_steps=5, max_quantity=49,
                       num_train=600, num_eval=100)


@dataclasses.dataclass
class Config(RunFields):
    protocol: str = "stream"  # stream, serial or single: how agents hand steps on
    solver_model: str = ""  # a trained solver (directory or hub id); with checker_model, nothing is trained
    checker_model: str = ""  # a trained checker
    eval_problems: int = 100  # held-out problems solved under `protocol`
    validation_problems: int = 30  # training problems kept out of the role data; the solver -> checker chain solves them after training (tune's metric)
    latency_problems: int = 10  # held-out problems solved one at a time for latency
    depth_curve_max: int = 6  # chains of depth 1..this under stream and serial; 0: no curve
    depth_curve_problems: int = 4  # problems per (depth, protocol) point
    register_model: bool = True  # register both role models in MLflow's model registry
    num_samples_logged: int = 20  # runs logged in samples.jsonl
    model: TinyLMConfig = dataclasses.field(default_factory=default_model)
    traces: TraceConfig = dataclasses.field(default_factory=default_traces)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    topology: TopologyConfig = dataclasses.field(default_factory=TopologyConfig)
    agents: AgentConfig = dataclasses.field(default_factory=AgentConfig)

    section: ClassVar[str] = "streamma"

    def validate(self) -> None:
        require(self.protocol in PROTOCOLS, "protocol", f"expected one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        require(bool(self.solver_model) == bool(self.checker_model), "checker_model",
                "give both solver_model and checker_model, or neither (then both are trained)")
        require(not self.agents.endpoint or self.solver_model, "agents.endpoint", "needs solver_model and checker_model (the endpoint's model names)")
        require(self.eval_problems >= 1, "eval_problems", "must be >= 1")
        require(0 <= self.validation_problems < self.traces.num_train, "validation_problems",
                f"must be in [0, traces.num_train={self.traces.num_train})")
        require(self.latency_problems >= 1, "latency_problems", "must be >= 1")
        require(0 <= self.depth_curve_max <= 12, "depth_curve_max", "must be in 0..12")
        require(self.depth_curve_problems >= 1, "depth_curve_problems", "must be >= 1")
        fan_in = max(len(a.upstream) for a in build_topology(self.topology).agents)
        require(fan_in <= self.train.max_upstreams or bool(self.checker_model), "train.max_upstreams",
                f"an agent of the topology reads {fan_in} upstreams; train the checker on that many")


def splits(config: Config):
    """(task, training, held-out problems); `training_split` cuts validation from the training ones."""
    from workloads.tri.traces import STEP_TASKS

    task = STEP_TASKS[config.traces.task]
    train, held_out = task.splits(config.traces, config.seed)
    return task, train, held_out


def training_split(config: Config, train: list) -> tuple[list, list]:
    """(the problems the role data is made from, the validation problems): validation is the tail."""
    cut = len(train) - config.validation_problems
    return train[:cut], train[cut:]


def validation_chain(config: Config, task, problems: list, solver, checker, tokenizer, rank: int, world_size: int) -> dict:
    """The trained solver -> checker chain, serially and in process, on the validation problems
    (each rank its share): `val_accuracy` (the checker's answer), what `rayworks tune streamma`
    selects on, and `val_solver_accuracy`."""
    from workloads.distributed import gather_objects
    from workloads.lm import complete_counted
    from workloads.streamma.agents import agent_prompt, score_traces
    from workloads.tri.traces import split_steps

    if not problems:
        return {}
    mine = problems[rank::world_size]
    budget = min(config.agents.max_step_tokens * config.agents.max_steps, config.model.max_positions // 2)

    def lines(text: str) -> list[str]:
        return split_steps(text)[: config.agents.max_steps]

    solver_traces = [lines(t) for t in complete_counted(solver, tokenizer, [agent_prompt(p.prompt, [], []) for p in mine], budget)[0]]
    checker_prompts = [agent_prompt(p.prompt, [trace], []) for p, trace in zip(mine, solver_traces)]
    checker_traces = [lines(t) for t in complete_counted(checker, tokenizer, checker_prompts, budget)[0]]
    counts = gather_objects((len(mine), sum(score_traces(task, mine, solver_traces)[0]), sum(score_traces(task, mine, checker_traces)[0])))
    total = sum(n for n, _, _ in counts)
    return {"val_solver_accuracy": sum(s for _, s, _ in counts) / total, "val_accuracy": sum(c for _, _, c in counts) / total}


def with_bos(tokenizer, rows: list[dict]) -> list[dict]:
    """TRL tokenizes without special tokens; the toolkit's `encode_text` adds BOS. Writing BOS
    into the prompt makes both read the same ids."""
    return [dict(r, prompt=(tokenizer.bos_token or "") + r["prompt"]) for r in rows]


# --- training (Ray Train + TRL) ----------------------------------------------------------------


def step_budget(config: Config) -> tuple[int, int]:
    """What Tune's scheduler counts: one report at the end of training, and one step past it."""
    return 2, 2


def train_loop_per_worker(payload: dict) -> None:
    """Runs on every Ray Train worker: the solver's SFT, then the checker's, warm-started."""
    import copy

    import ray.train
    import torch

    from workloads.lm import tiny_lm
    from workloads.streamma.agents import role_rows

    config: Config = from_dict(Config, payload["config"])
    rank, world_size, run = train_worker_context(payload)
    torch.manual_seed(config.seed)
    task, train_problems, _ = splits(config)
    train_problems, validation = training_split(config, train_problems)
    scratch = tempfile.mkdtemp(prefix="streamma-")
    t = config.train

    rows = {role: role_rows(role, train_problems, task.reference, config.seed, t.max_upstreams) for role in REGISTERED}

    def train_role(role: str, model, steps: int) -> float:
        loss = trl_stages.sft(t, config.seed, config.model.max_positions, model, tokenizer, with_bos(tokenizer, rows[role]), steps,
                              t.lr, t.warmup_steps, scratch)
        say(payload, f"[streamma] {role} SFT: {steps} steps on {len(rows[role])} rows, loss {loss:.4f}")
        return loss

    # the tokenizer's merges (if any) are learned on both roles' data, the same on every rank
    solver, tokenizer = tiny_lm(config.model, [r["prompt"] + r["completion"] for role in REGISTERED for r in rows[role]],
                                seed=config.seed)
    metrics = {"solver_sft_loss": train_role("solver", solver, t.solver_steps)}
    checker = copy.deepcopy(solver)
    metrics["checker_sft_loss"] = train_role("checker", checker, t.checker_steps)
    check_ranks_in_sync(solver, run, 0)
    check_ranks_in_sync(checker, None, 0)
    metrics.update(validation_chain(config, task, validation, solver.eval(), checker.eval(), tokenizer, rank, world_size))
    if rank == 0:
        run.log_metrics(metrics, step=0)
        out = Path(scratch) / "checkpoint"
        for name, model in (("solver", solver), ("checker", checker)):
            model.save_pretrained(out / name)
            tokenizer.save_pretrained(out / name)
        ray.train.report({**metrics, "step": 1}, checkpoint=ray.train.Checkpoint.from_directory(out))
    else:
        ray.train.report({**metrics, "step": 1})


def train_roles(config: Config, run_record: tracking.Run, run_name: str, train_callbacks) -> tuple[dict[str, str], object]:
    """The role models' directories, trained here (Ray Train) or given."""
    from ray.train.torch import TorchTrainer

    if config.solver_model:
        return {"solver": config.solver_model, "checker": config.checker_model}, None
    # Cached by everything training reads: the arms of a comparison (protocols, topologies) that
    # share a seed share their models, trained once.
    key = stable_hash([to_dict(config.model), to_dict(config.traces), to_dict(config.train), config.seed, config.validation_problems])
    target = Path(storage_path(config.storage_path)) / "streamma-roles" / key
    results = []

    def build(directory: Path) -> None:
        config.train.prepare_driver()
        with ProgressLines() as lines:
            result = TorchTrainer(
                train_loop_per_worker,
                train_loop_config={"config": to_dict(config), "progress": lines.queue,
                                   "mlflow_run_id": run_record.run_id, "mlflow_uri": run_record.uri},
                scaling_config=config.train.scaling_config(),
                run_config=train_run_config(config, run_name, train_callbacks),
            ).fit()
        result.checkpoint.to_directory(str(directory))
        results.append(result)

    directory = cached_directory(target, build)
    if not results:
        run_record.set_tags({"rayworks.roles_from_cache": str(directory)})
        print(f"[streamma] role models from the cache ({directory})", flush=True)
    return {role: str(directory / role) for role in REGISTERED}, (results or [None])[0]


# --- evaluation --------------------------------------------------------------------------------


def checker_correction(config: Config, checker_dir: str, problems: list) -> float:
    """How often the checker's trace is right when its one upstream trace is wrong (all of it
    received): greedy, in process, on held-out problems."""
    import random

    from workloads.lm import complete_counted, load_lm
    from workloads.streamma.agents import agent_prompt, corrupted_trace, score_traces
    from workloads.tri.traces import split_steps

    task = splits(config)[0]
    model, tokenizer = load_lm(checker_dir)
    rng = random.Random(config.seed + 7)
    upstreams = [corrupted_trace(task.reference(p), rng, clean_rate=0.0) for p in problems]
    prompts = [agent_prompt(p.prompt, [u], []) for p, u in zip(problems, upstreams)]
    budget = config.agents.max_step_tokens * config.agents.max_steps
    texts, _, _ = complete_counted(model, tokenizer, prompts, min(budget, config.model.max_positions // 2))
    answers, _ = score_traces(task, problems, [split_steps(t) for t in texts])
    return sum(answers) / len(answers)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def launch(config: Config, models: dict[str, str]) -> tuple[dict, dict]:
    """The agents of the configured topology and of the depth curve's deepest chain, launched
    together and shared where they coincide (`actors.streamma.launch_cast`)."""
    from actors.streamma import launch_cast
    from workloads.streamma.topology import chain, check_topology

    a = config.agents
    topologies = [build_topology(config.topology)] + ([check_topology(chain(config.depth_curve_max))] if config.depth_curve_max else [])
    cast = launch_cast(topologies, models, a.max_step_tokens, a.max_steps, a.temperature, config.seed, a.endpoint,
                       nice_per_level=a.nice_per_level)
    return cast[0], (cast[1:] or [{}])[0]


def evaluate_protocol(config: Config, agents: dict) -> tuple[dict[str, float], list[dict]]:
    """The configured topology (`agents`) under `protocol`: accuracy and step accuracy by position
    on the held-out problems (several in flight), then latency one problem at a time."""
    from actors.streamma import solve_many
    from workloads.streamma.agents import score_traces

    task, _, held_out = splits(config)
    problems = held_out[: config.eval_problems]
    topology = build_topology(config.topology)
    a = config.agents
    runs = solve_many(agents, topology, config.protocol, [p.prompt for p in problems], a.in_flight)
    answers, positions = score_traces(task, problems, [r["steps"] for r in runs])
    solver_traces = [[s["text"] for s in r["agents"]["solver"]["steps"]] for r in runs]
    _, solver_positions = score_traces(task, problems, solver_traces)
    timed = solve_many(agents, topology, config.protocol, [p.prompt for p in held_out[: config.latency_problems]], 1)
    metrics = {
        "accuracy": sum(answers) / len(answers),
        "solver_accuracy": sum(score_traces(task, problems, solver_traces)[0]) / len(problems),
        "generated_tokens_per_problem": statistics.fmean(r["generated_tokens"] for r in runs),
        "prompt_tokens_per_problem": statistics.fmean(r["prompt_tokens"] for r in runs),
        "truncated_steps": sum(r["truncated"] for r in runs),
        "lost_streams": sum(len(r["lost"]) for r in runs),
        "latency_s/p50": percentile([r["latency"] for r in timed], 0.5),
        "latency_s/mean": statistics.fmean(r["latency"] for r in timed),
        "first_final_token_s/p50": percentile([r["first_final_token"] for r in timed], 0.5),
        "hop_ms/p50": 1000 * percentile([h for r in timed for h in r["hops"]], 0.5),
        "hop_ms/p99": 1000 * percentile([h for r in timed for h in r["hops"]], 0.99),
    }
    for name, table in (("sink", positions), ("solver", solver_positions)):
        for i in range(max(len(v) for v in table)):
            column = [v[i] for v in table if i < len(v)]
            metrics[f"step_accuracy/{name}/{i + 1}"] = sum(column) / len(column)
    samples = [{"question": p.prompt.strip(), "reference": task.reference(p), "final": r["steps"], "correct": ok,
                "agents": {name: [s["text"] for s in st["steps"]] for name, st in r["agents"].items()}}
               for p, r, ok in zip(problems[: config.num_samples_logged], runs, answers)]
    return {k: v for k, v in metrics.items() if v == v}, samples


DEPTH_METRICS = {"latency": "depth_latency_s", "first_final_token": "depth_first_final_token_s"}


def depth_curve(config: Config, agents: dict) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Mean end-to-end latency and time to the sink's first token of chains of depth
    1..`depth_curve_max` (`agents`: the deepest chain's), stream and serial, one problem at a time
    on the same problems: {"latency" | "first_final_token": {protocol: [(depth, seconds)]}}."""
    from actors.streamma import solve_many
    from workloads.streamma.topology import chain, check_topology

    if not config.depth_curve_max:
        return {}
    _, _, held_out = splits(config)
    questions = [p.prompt for p in held_out[: config.depth_curve_problems]]
    curve: dict[str, dict[str, list[tuple[float, float]]]] = {kind: {"stream": [], "serial": []} for kind in DEPTH_METRICS}
    for depth in range(1, config.depth_curve_max + 1):
        topology = check_topology(chain(depth))
        for protocol in ("stream", "serial"):
            runs = solve_many(agents, topology, protocol, questions, 1)
            for kind in DEPTH_METRICS:
                curve[kind][protocol].append((depth, statistics.fmean(r[kind] for r in runs)))
    return curve


# --- the run ---------------------------------------------------------------------------------


def run(config: Config, *, resume: bool = False, parent_run_id: str | None = None, train_callbacks=()) -> RunSummary:
    import ray

    _, train_problems, held_out = splits(config)
    train_problems, _ = training_split(config, train_problems)
    run_record, run_name = open_run(PIPELINE, config, resume=resume, parent_run_id=parent_run_id,
                                    data_hash=stable_hash(p.key for p in train_problems))
    with ending_run(run_record):
        started = time.monotonic()
        models, _ = train_roles(config, run_record, run_name, train_callbacks)
        print(f"[streamma] role models ready after {time.monotonic() - started:.0f} s", flush=True)
        metrics = {}
        if not config.agents.endpoint:
            metrics["checker/corrected_rate"] = checker_correction(config, models["checker"], held_out[: config.eval_problems])
            print(f"[streamma] checker right on {metrics['checker/corrected_rate']:.3f} of held-out problems whose upstream "
                  "trace is wrong", flush=True)
        agents, deepest_chain = launch(config, models)
        try:
            protocol_metrics, samples = evaluate_protocol(config, agents)
            metrics.update(protocol_metrics)
            print(f"[streamma] {config.protocol} evaluated after {time.monotonic() - started:.0f} s", flush=True)
            curve = depth_curve(config, deepest_chain)
            print(f"[streamma] depth curve after {time.monotonic() - started:.0f} s", flush=True)
        finally:
            for agent in {*agents.values(), *deepest_chain.values()}:
                ray.kill(agent)
        summary = log_outcome(config, run_record, models, metrics, curve, samples)
    return summary


def log_outcome(config: Config, run_record: tracking.Run, models: dict[str, str], metrics: dict, curve: dict,
                samples: list[dict]) -> RunSummary:
    from workloads.plots import plot_curves

    for kind, prefix in DEPTH_METRICS.items():
        for protocol, points in curve.get(kind, {}).items():
            for depth, seconds in points:
                metrics[f"{prefix}/{protocol}/{int(depth)}"] = seconds
    if curve:
        deepest = {p: points[-1][1] for p, points in curve["latency"].items()}
        metrics["depth_serial_over_stream"] = deepest["serial"] / deepest["stream"]
        png = plot_curves({"end-to-end latency (s) by chain depth": curve["latency"],
                           "the sink's first token (s) by chain depth": curve["first_final_token"]},
                          Path(tempfile.mkdtemp()) / "latency_depth.png", "StreamMA: latency vs depth", xlabel="chain depth (agents)")
        run_record.log_artifact(png)
    run_record.log_metrics(metrics, step=1)
    run_record.log_text("\n".join(json.dumps(s) for s in samples) + "\n", "samples.jsonl")
    versions = {}
    if not config.solver_model:
        for role in REGISTERED:
            run_record.log_artifact(models[role], role)
        if config.register_model:
            versions = {role: tracking.register_model(run_record, role, name) for role, name in REGISTERED.items()}
    positions = " ".join(f"{metrics[k]:.2f}" for k in sorted(metrics) if k.startswith("step_accuracy/solver/"))
    print(f"[streamma] {config.protocol} on {config.topology.shape}: accuracy {metrics['accuracy']:.3f} "
          f"(solver alone {metrics['solver_accuracy']:.3f}); latency p50 {metrics['latency_s/p50'] * 1000:.0f} ms, "
          f"first final token {metrics['first_final_token_s/p50'] * 1000:.0f} ms; solver step accuracy by position {positions}",
          flush=True)
    return RunSummary(pipeline=PIPELINE, metric=KEY_METRIC, value=metrics["accuracy"], run_id=run_record.run_id,
                      artifacts=run_record.artifact_uri, before=metrics["solver_accuracy"],
                      extra={**{k: round(v, 4) for k, v in metrics.items()}, "registered_versions": versions})


def main(argv: list[str] | None = None) -> int:
    return main_for(PIPELINE, Config, run, argv)


if __name__ == "__main__":
    from pipelines.streamma import main as importable_main  # pickled by module name on the workers

    sys.exit(importable_main())
