"""LongTraceRL training: a reader SFT-ed on the QA format, then GRPO with the rubric reward.

    python -m pipelines.longtrace [--set data_dir=DIR grpo.reward=outcome eta=0.3 ...] [--resume]

Recipe:
1. Data: `data_dir` (built by `pipelines.longtrace_data`), or, when empty, the `data` section
   built once into `storage_path/longtrace-data/<config hash>` and reused by later runs.
2. Split by fact: a question whose chain uses one of the `held_out_facts` share of the graph's
   facts is held out (in both modes); no training target states a held-out fact. Held-out
   questions are divided once more: validation (model selection) and test (reported).
3. On Ray Train: SFT the reader on tiered and random contexts of the training questions
   (the chain target of `workloads.longtrace.reader`), cached by everything it depends on,
   so the rubric-versus-outcome comparison SFTs once per seed.
4. GRPO (`workloads.grpo`) on the tiered training contexts: G samples per prompt, rewards from
   `group_rewards` (rubric: eta; outcome: eta = 0), asymmetric clipping, KL 0 by default.
   Every `eval_every` steps a checkpoint with validation accuracy; GRPO stops after `patience`
   evaluations without a validation gain, and the reader kept is the checkpoint with the best
   validation accuracy (the SFT reader itself, step 0, included).
5. Evaluations to MLflow, on the test questions: greedy accuracy on tiered versus random
   contexts of equal length (difficulty) and closed-book (no documents: what memory alone
   gives), sampled accuracy, and sampled accuracy on the GRPO prompts, before GRPO and for
   the kept reader, which is logged and registered.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import tempfile
from pathlib import Path
from typing import ClassVar, Literal

import torch

from pipelines import longtrace_data
from pipelines.checkpoints import (
    latest_checkpoint,
    report_with_checkpoint,
    restore_optimizer,
)
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
    worker_device,
)
from workloads import tracking
from workloads.distributed import any_rank
from workloads.caching import COMMITTED_ROOT, cached_directory, committed_entry, is_complete, stable_hash
from workloads.config import ConfigError, from_dict, require, to_dict
from workloads.grpo import GRPOConfig, frozen_reference, grpo_step
from workloads.lm import (
    TinyLMConfig,
    load_lm,
    load_tokenizer,
    model_config,
    sample_groups,
)
from workloads.longtrace.format import contexts_dir, data_fingerprint
from workloads.longtrace.kg import KGConfig
from workloads.longtrace.reader import (
    closed_book,
    greedy_scores,
    is_held_out,
    is_validation,
    load_examples,
    sampled_accuracy,
)
from workloads.longtrace.reward import JUDGES, group_rewards, llm_judge
from workloads.longtrace.search import ContextConfig
from workloads.plots import plot_curves
from workloads.sft import (
    batch_at,
    batch_indices,
    tokenize_examples,
    train_step,
    warmup_cosine,
)
from workloads.strategies import ReplicaEngine

PIPELINE = "longtrace"
REGISTERED_MODEL = "rayworks-longtrace"
KEY_METRIC = "eval_accuracy_tiered"  # on the test questions
TUNE_METRIC = "val_accuracy_tiered"  # what searches select on: the validation questions
# What `rayworks compare` on this pipeline cannot control (printed with every comparison).
THREATS = (
    'one synthetic knowledge graph with templated documents: difficulty comes from its generator',
    'held-out facts are kept out of training targets, but training contexts may show them as distractors',
)
QUICKSTART = ["sft.steps=500", "grpo.steps=20", "eval_every=10"]
COMMITTED_READERS = "longtrace-reader"  # data/longtrace-reader/<key>: the quickstart's SFT-ed reader (README there)
PROBED_GRPO_PROMPTS = 64  # the GRPO prompts whose sampled accuracy is probed (the first ones: a fixed set)
# Metrics the run's summary gives before and after GRPO.
SUMMARISED = ("eval_accuracy_tiered", "eval_accuracy_random", "eval_accuracy_closed_book", "grpo_prompts_sampled_accuracy")


def default_data() -> longtrace_data.Config:
    """The embedded world: 800 questions over the synthetic KG, 256-token messages (about 160 of documents)."""
    return longtrace_data.Config(kg=KGConfig(num_questions=800), context=ContextConfig(budget_tokens=256))


@dataclasses.dataclass
class SFTStage:
    """The reader's SFT on the QA format, before GRPO."""

    steps: int = 600  # SFT steps of the reader (cached)
    batch_size: int = 8  # examples per step
    lr: float = 3e-3  # AdamW peak learning rate
    warmup_steps: int = 30  # linear warm-up, then cosine decay
    weight_decay: float = 0.01  # AdamW weight decay
    section: ClassVar[str] = "sft"

    def validate(self) -> None:
        require(self.steps >= 0, "steps", "must be >= 0")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.lr > 0, "lr", "must be > 0")


@dataclasses.dataclass
class Config(RunFields):
    data_dir: str = ""  # longtrace_data output; empty: build the `data` section (cached)
    model_init: str = ""  # a reader to start from (directory or hub id); empty: the tiny reader
    reward: Literal["rubric", "outcome"] = "rubric"  # rubric (eta-weighted rubric hits) or outcome (0/1)
    eta: float = 0.3  # rubric weight inside correct answers (training); evaluation uses 0
    judge: str = "exact"  # exact | f1 | llm (an OpenAI-compatible endpoint: judge_endpoint, judge_model)
    judge_endpoint: str = ""  # judge=llm: the endpoint's base URL
    judge_model: str = ""  # judge=llm: the served model's name
    held_out_facts: float = 0.1  # share of the graph's facts held out; questions using one are evaluated, never trained on
    grpo_prompts: int = 16  # GRPO draws its prompts from this many training questions (0: all)
    eval_every: int = 10  # GRPO steps between validation evaluations (each one a checkpoint)
    patience: int = 3  # evaluations without a validation gain before GRPO stops (0: never early)
    validation_share: float = 0.5  # of the held-out questions, used to select the checkpoint; the rest is the test set
    probe_samples: int = 4  # sampled responses per question in the sampled-accuracy probes
    register_model: bool = True  # register the final reader in MLflow's registry
    num_samples_logged: int = 12  # held-out responses logged as samples.jsonl
    data: longtrace_data.Config = dataclasses.field(default_factory=default_data)
    model: TinyLMConfig = dataclasses.field(default_factory=lambda: TinyLMConfig(max_positions=512))
    sft: SFTStage = dataclasses.field(default_factory=SFTStage)
    grpo: GRPOConfig = dataclasses.field(default_factory=GRPOConfig)
    train: Workers = dataclasses.field(default_factory=Workers)

    section: ClassVar[str] = "longtrace"

    def validate(self) -> None:
        require(self.reward in ("rubric", "outcome"), "reward", "expected rubric or outcome")
        require(0.0 <= self.eta <= 1.0, "eta", "must be in [0, 1]")
        require(self.judge in JUDGES or self.judge == "llm", "judge", f"expected one of {sorted(JUDGES) + ['llm']}")
        require(self.judge != "llm" or bool(self.judge_endpoint), "judge_endpoint", "judge=llm needs the endpoint's base URL")
        require(0.0 < self.held_out_facts < 1.0, "held_out_facts", "must be in (0, 1)")
        require(self.grpo_prompts >= 0, "grpo_prompts", "must be >= 0")
        require(self.eval_every >= 1, "eval_every", "must be >= 1")
        require(self.patience >= 0, "patience", "must be >= 0")
        require(0.0 < self.validation_share < 1.0, "validation_share", "must be in (0, 1)")
        require(self.probe_samples >= 1, "probe_samples", "must be >= 1")
        require(bool(self.model_init) or self.sft.steps > 0, "sft.steps", "the tiny reader needs SFT steps (or set model_init)")
        require(self.sft.batch_size % self.train.num_workers == 0, "sft.batch_size",
                f"must be a multiple of train.num_workers ({self.train.num_workers}): each rank takes an equal share")


def step_budget(config: Config) -> tuple[int, int]:
    """(steps, evaluation interval) of the part Tune's scheduler sees: GRPO."""
    return config.grpo.steps, config.eval_every


@functools.lru_cache(maxsize=4)
def _judge(name: str, endpoint: str, model: str):
    return llm_judge(endpoint, model) if name == "llm" else name


def judge_for(config: Config):
    """The outcome judge: a built-in judge's name, or the LLM judge behind `judge_endpoint`."""
    return _judge(config.judge, config.judge_endpoint, config.judge_model)


def ensure_data(config: Config, parent_run_id: str | None) -> Path:
    """`data_dir`, or the `data` section built once into a directory named by its hash."""
    if config.data_dir:
        directory = Path(config.data_dir).expanduser().resolve()
        if not contexts_dir(directory, "tiered").is_dir():
            raise ConfigError(f"data_dir: {directory} has no mode=tiered/ rows; build them with "
                              f"`rayworks run longtrace_data --set output_dir={directory}`")
        return directory
    directory = Path(storage_path(config.storage_path)) / "longtrace-data" / stable_hash([to_dict(config.data)])
    return cached_directory(directory, lambda building: longtrace_data.run(
        dataclasses.replace(config.data, output_dir=str(building)), parent_run_id=parent_run_id))


@dataclasses.dataclass
class Splits:
    sft: list  # tiered + random contexts of the training questions
    grpo: list  # tiered contexts GRPO draws from
    eval_tiered: list  # the test questions
    eval_random: list
    eval_closed_book: list  # the test questions with no documents
    val_tiered: list  # the validation questions (checkpoint selection, early stopping)


def split_examples(config: Config, data_dir: Path, tokenizer) -> Splits:
    tiered = load_examples(contexts_dir(data_dir, "tiered"), tokenizer)
    random_dir = contexts_dir(data_dir, "random")
    random_rows = load_examples(random_dir, tokenizer) if random_dir.is_dir() else []
    held = lambda e: is_held_out(e, config.held_out_facts)  # noqa: E731
    grpo = [e for e in tiered if not held(e)]
    grpo = grpo[: config.grpo_prompts] if config.grpo_prompts else grpo
    validation = lambda e: is_validation(e, config.validation_share)  # noqa: E731
    test = lambda e: held(e) and not validation(e)  # noqa: E731
    eval_tiered = [e for e in tiered if test(e)]
    splits = Splits([e for e in tiered + random_rows if not held(e)], grpo, eval_tiered,
                    [e for e in random_rows if test(e)], [closed_book(e, tokenizer) for e in eval_tiered],
                    [e for e in tiered if held(e) and validation(e)])
    if not splits.sft or not splits.eval_tiered or not splits.val_tiered:
        raise ConfigError(f"data_dir: {data_dir} holds too few questions to split "
                          f"({len(tiered)} tiered rows, held_out_facts={config.held_out_facts})")
    return splits


def reader_and_tokenizer(config: Config, data_dir: Path):
    if config.model_init:
        return load_lm(config.model_init)
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(data_dir / "tokenizer")  # the tokenizer that measured the budget
    torch.manual_seed(config.seed)
    return AutoModelForCausalLM.from_config(model_config(config.model, tokenizer)), tokenizer


def sft_reader(config: Config, model, tokenizer, splits: Splits, run, payload: dict) -> None:
    """Teach the reader the QA format (in place). Each rank takes its share of every batch and
    the replicas average gradients, so they end identical and unwrapped for GRPO's strategy;
    rank 0 logs the loss on its share."""
    stage = config.sft
    max_length = max(len(tokenizer.encode(e.prompt + " " + e.chain_target)) for e in splits.sft) + 2
    data = tokenize_examples(tokenizer, [e.prompt for e in splits.sft], [" " + e.chain_target for e in splits.sft], max_length)
    engine = ReplicaEngine(model, lambda parameters: torch.optim.AdamW(parameters, lr=stage.lr, weight_decay=stage.weight_decay),
                           schedule=warmup_cosine(stage.warmup_steps, stage.steps), device=worker_device(config.train))
    share = stage.batch_size // engine.world_size
    for step in range(stage.steps):
        indices = batch_indices(step, share, engine.world_size, engine.rank, len(data), config.seed)
        loss = train_step(engine, batch_at(data, indices))
        if run is not None and ((step + 1) % 25 == 0 or step + 1 == stage.steps):
            run.log_metrics({"sft_loss": loss}, step=step + 1)
            say(payload, f"[longtrace] sft step {step + 1}/{stage.steps}  loss {loss:.4f}")


def validate(config: Config, model, tokenizer, splits: Splits) -> dict[str, float]:
    """What GRPO's checkpoints are selected on (validation) and the test curve beside it."""
    g, judge = config.grpo, judge_for(config)
    val, _ = greedy_scores(model, tokenizer, splits.val_tiered, g.max_new_tokens, judge)
    test, _ = greedy_scores(model, tokenizer, splits.eval_tiered, g.max_new_tokens, judge)
    return {"val_accuracy_tiered": val["accuracy"], "eval_accuracy_tiered": test["accuracy"]}


def evaluate(config: Config, model, tokenizer, splits: Splits, seed: int) -> dict[str, float]:
    """Everything reported on the test questions (before GRPO and for the kept reader)."""
    g = config.grpo
    tiered, _ = greedy_scores(model, tokenizer, splits.eval_tiered, g.max_new_tokens, judge_for(config))
    metrics = {f"eval_{k}_tiered": v for k, v in tiered.items()}
    if splits.eval_random:
        random_scores, _ = greedy_scores(model, tokenizer, splits.eval_random, g.max_new_tokens, judge_for(config))
        metrics.update({f"eval_{k}_random": v for k, v in random_scores.items()})
        metrics["difficulty_gap"] = metrics["eval_accuracy_random"] - metrics["eval_accuracy_tiered"]
    closed, _ = greedy_scores(model, tokenizer, splits.eval_closed_book, g.max_new_tokens, judge_for(config))
    metrics["eval_accuracy_closed_book"] = closed["accuracy"]
    metrics["eval_sampled_accuracy_tiered"] = sampled_accuracy(model, tokenizer, splits.eval_tiered, config.probe_samples,
                                                               g.max_new_tokens, g.temperature, seed, judge_for(config))
    metrics["grpo_prompts_sampled_accuracy"] = sampled_accuracy(model, tokenizer, splits.grpo[:PROBED_GRPO_PROMPTS], config.probe_samples,
                                                                g.max_new_tokens, g.temperature, seed + 1, judge_for(config))
    return metrics


def rollout_rewards(config: Config, rollouts, examples) -> torch.Tensor:
    eta = config.eta if config.reward == "rubric" else 0.0
    size, rewards = config.grpo.group_size, []
    for j, example in enumerate(examples):
        group = slice(j * size, (j + 1) * size)
        rewards += group_rewards(rollouts.texts[group], example.label, example.rubrics, eta=eta, judge=judge_for(config),
                                 truncated=rollouts.truncated[group])
    return torch.tensor(rewards)


def train_loop_per_worker(payload: dict) -> None:
    config: Config = from_dict(Config, payload["config"])
    data_dir, reader_cache = Path(payload["data_dir"]), payload["reader_cache"]
    rank, world_size, run = train_worker_context(payload)
    torch.manual_seed(config.seed)

    model, tokenizer = reader_and_tokenizer(config, data_dir)
    splits = split_examples(config, data_dir, tokenizer)
    g = config.grpo
    restored = latest_checkpoint()
    if restored:  # resume inside GRPO
        model.load_state_dict(restored.model_state)
    elif reader_cache and is_complete(reader_cache):
        model.load_state_dict(load_lm(reader_cache)[0].state_dict())
        if run:
            origin = "committed" if Path(reader_cache).is_relative_to(COMMITTED_ROOT) else "cached"
            run.set_tags({"reader_sft": f"{origin} {reader_cache}"})
    elif config.sft.steps:
        sft_reader(config, model, tokenizer, splits, run, payload)
        if rank == 0 and reader_cache:
            cached_directory(reader_cache, lambda staging: (model.save_pretrained(staging), tokenizer.save_pretrained(staging)))

    # A whole frozen copy on every rank, taken before the strategy shards the model.
    reference = frozen_reference(model).to(worker_device(config.train)) if g.kl_coef > 0 else None
    engine = config.train.engine(model, lambda parameters: torch.optim.AdamW(parameters, lr=g.lr, weight_decay=0.0),
                                 max_grad_norm=g.max_grad_norm)
    start_step = restored.trainer_state["step"] if restored else 0
    if restored:
        restore_optimizer(engine, restored, run, payload)
    eval_seed = config.seed * 7919  # the same sampled probes before GRPO and for the kept reader, apart from the training draws

    def on_rank0(evaluation) -> dict[str, float] | None:  # every rank gathers the weights; rank 0 evaluates
        eval_model = engine.full_model()
        return evaluation(config, eval_model, tokenizer, splits) if rank == 0 else None

    if start_step == 0:  # the SFT reader: the full test evaluation, and checkpoint 0 (GRPO may not beat it)
        before = on_rank0(lambda *args: {**evaluate(*args, eval_seed), **validate(*args)})
        if rank == 0:
            run.log_metrics({**before, "grpo_step": 0}, step=0)
            run.log_metrics({f"before_grpo/{k}": v for k, v in before.items()}, step=0)
            say(payload, f"[longtrace] before GRPO: tiered {before['eval_accuracy_tiered']:.3f} "
                         f"random {before.get('eval_accuracy_random', float('nan')):.3f} "
                         f"closed book {before['eval_accuracy_closed_book']:.3f}")
    stopping = EarlyStopping(config.patience, restored.trainer_state.get("early_stopping") if restored else None)
    if start_step == 0:
        if rank == 0:
            stopping.update(before["val_accuracy_tiered"])
        report_with_checkpoint({**(before or {}), "grpo_step": 0, "step": 0}, engine, tokenizer,
                               {"step": 0, "early_stopping": stopping.state()})

    for step in range(start_step, g.steps):
        indices = batch_indices(step, g.prompts_per_step, world_size, rank, len(splits.grpo), config.seed)
        examples = [splits.grpo[i] for i in indices.tolist()]
        rollouts = sample_groups(engine.model, tokenizer, [e.prompt for e in examples], g.group_size, g.max_new_tokens,
                                 g.temperature, generator_seed=(config.seed * 100_003 + step) * world_size + rank,
                                 synced=engine.sharded)
        rewards = rollout_rewards(config, rollouts, examples)
        stats = grpo_step(engine, rollouts, rewards, g, reference)
        done = step + 1
        metrics = {"reward": float(rewards.mean()), "truncated": sum(rollouts.truncated) / len(rollouts.truncated),
                   "response_tokens": float(rollouts.completion_mask.sum(dim=1).float().mean()), "grpo_step": done,
                   "step": done, **stats}
        if rank == 0:
            run.log_metrics(metrics, step=done)
        if done % config.eval_every == 0 or done == g.steps:
            evaluation = on_rank0(validate)
            stop = False
            if rank == 0:
                metrics.update(evaluation)
                run.log_metrics(evaluation, step=done)
                stop = stopping.update(evaluation["val_accuracy_tiered"])
                say(payload, f"[longtrace] grpo step {done}/{g.steps}  reward {metrics['reward']:.3f}  "
                             f"validation {evaluation['val_accuracy_tiered']:.3f}  test tiered {evaluation['eval_accuracy_tiered']:.3f}"
                             + ("  (stopping: no validation gain)" if stop else ""))
            report_with_checkpoint(metrics, engine, tokenizer, {"step": done, "early_stopping": stopping.state()})
            if any_rank(stop):
                break
    check_ranks_in_sync(engine, run, g.steps)


class EarlyStopping:
    """Stop after `patience` evaluations without a gain over the best so far (0: never).
    Its state travels in the checkpoints, so a resumed run counts on."""

    def __init__(self, patience: int, state: dict | None = None):
        self.patience = patience
        self.best, self.stale = (state["best"], state["stale"]) if state else (float("-inf"), 0)

    def update(self, value: float) -> bool:
        if value > self.best:
            self.best, self.stale = value, 0
        else:
            self.stale += 1
        return self.patience > 0 and self.stale >= self.patience

    def state(self) -> dict:
        return {"best": self.best, "stale": self.stale}


def kept_checkpoint(result):
    """The checkpoint with the best validation accuracy (the later one on a tie), and its metrics."""
    scored = [(checkpoint, metrics) for checkpoint, metrics in result.best_checkpoints if "val_accuracy_tiered" in metrics]
    if not scored:
        return result.checkpoint, {}
    return max(scored, key=lambda pair: (pair[1]["val_accuracy_tiered"], pair[1]["grpo_step"]))


def run(config: Config, *, resume: bool = False, parent_run_id: str | None = None, train_callbacks=()) -> RunSummary:
    from ray.train.torch import TorchTrainer

    given_data = ensure_data(config, None) if config.data_dir else None  # a wrong path fails before any run opens
    data_key = str(given_data) if given_data else stable_hash([to_dict(config.data)])
    run_record, run_name = open_run(PIPELINE, config, resume=resume, parent_run_id=parent_run_id, data_hash=data_key)
    with ending_run(run_record):
        data_dir = given_data or ensure_data(config, run_record.run_id)
        run_record.set_tags({"data_dir": str(data_dir)})
        reader_cache = sft_reader_cache(config, data_dir)
        config.train.prepare_driver()
        with ProgressLines() as lines:
            trainer = TorchTrainer(
                train_loop_per_worker,
                train_loop_config={"config": to_dict(config), "data_dir": str(data_dir), "reader_cache": reader_cache,
                                   "progress": lines.queue, "mlflow_run_id": run_record.run_id, "mlflow_uri": run_record.uri},
                scaling_config=config.train.scaling_config(),
                run_config=train_run_config(config, run_name, train_callbacks, keep_best="val_accuracy_tiered"),
            )
            result = trainer.fit()
        checkpoint, kept = kept_checkpoint(result)
        summary = log_outcome(config, run_record, checkpoint, kept, data_dir)
    return summary


def sft_reader_cache(config: Config, data_dir: Path) -> str:
    """Where the SFT-ed reader is (or will be) kept, keyed by the data's content and everything
    the SFT depends on: the copy committed in `data/longtrace-reader/` for the embedded default,
    else one under `storage_path`; empty when there is nothing to cache (a given model, a URI)."""
    if config.model_init:
        return ""
    key = stable_hash([data_fingerprint(data_dir), to_dict(config.model), to_dict(config.sft), config.seed,
                       config.held_out_facts])
    if committed := committed_entry(COMMITTED_READERS, key):
        return str(committed)
    if "://" in config.storage_path:
        return ""
    cache_root = Path(storage_path(config.storage_path)) / "longtrace-readers"
    cache_root.mkdir(parents=True, exist_ok=True)
    return str(cache_root / key)


def log_outcome(config: Config, run_record: tracking.Run, checkpoint, kept: dict, data_dir: Path) -> RunSummary:
    """The kept reader: evaluated in full on the test questions, its samples and curves logged, registered."""
    with checkpoint.as_directory() as directory, tempfile.TemporaryDirectory() as scratch:
        model_dir = Path(directory) / "model"
        run_record.log_artifact(model_dir, "model")
        model, tokenizer = load_lm(model_dir)
        splits = split_examples(config, data_dir, tokenizer)
        kept_step = int(kept.get("grpo_step", config.grpo.steps))
        final = evaluate(config, model, tokenizer, splits, config.seed * 7919)
        run_record.log_metrics({**{f"kept/{k}": v for k, v in final.items()}, "kept/grpo_step": kept_step}, step=kept_step)
        shown = splits.eval_tiered[: config.num_samples_logged]
        _, responses = greedy_scores(model, tokenizer, shown, config.grpo.max_new_tokens, judge_for(config))
        samples = [{"question_id": e.question_id, "response": r, "label": e.label, "rubrics": e.rubrics,
                    "eval_reward": group_rewards([r], e.label, e.rubrics, eta=0.0, judge=judge_for(config))[0]}
                   for e, r in zip(shown, responses)]
        run_record.log_text("\n".join(json.dumps(s) for s in samples) + "\n", "samples.jsonl")
        history = {key: run_record.metric_history(key) for key in
                   ("reward", "sft_loss", "val_accuracy_tiered", "eval_accuracy_tiered", "grpo_prompts_sampled_accuracy")}
        plot = plot_curves({"GRPO reward (sampled)": {"train": history["reward"]},
                            "held-out accuracy (greedy, tiered)": {"validation": history["val_accuracy_tiered"],
                                                                   "test": history["eval_accuracy_tiered"]},
                            "SFT loss": {"sft": history["sft_loss"]}},
                           Path(scratch) / "learning_curve.png", f"longtrace {config.reward} {run_record.run_id[:8]}")
        run_record.log_artifact(plot)
    before = {key: values[0][1] for key in SUMMARISED if (values := run_record.metric_history(f"before_grpo/{key}"))}
    run_record.log_metrics({"final_eval_accuracy_tiered": final["eval_accuracy_tiered"]}, step=kept_step)
    version = tracking.register_model(run_record, "model", REGISTERED_MODEL) if config.register_model else None
    return RunSummary(PIPELINE, KEY_METRIC, final["eval_accuracy_tiered"], run_record.run_id, run_record.artifact_uri,
                      extra={"reward": config.reward, "data_dir": str(data_dir), "registered_version": version,
                             "kept_grpo_step": kept_step, "before_grpo": before,
                             "after_grpo": {k: final.get(k) for k in SUMMARISED}},
                      before=before.get("eval_accuracy_tiered"))


def main(argv: list[str] | None = None) -> int:
    return main_for(PIPELINE, Config, run, argv)


if __name__ == "__main__":
    from pipelines.longtrace import main as importable_main  # Ray pickles by reference

    sys.exit(importable_main())
