"""Code2LoRA: a hypernetwork reads a repository and writes the LoRA adapter a frozen code LM
completes its test assertions with; compared with no adapter, one shared LoRA and one LoRA per
repository.

    python -m pipelines.code2lora [--set arm=static baselines=none,shared,per_repo]

Recipe:
1. mine: the `code2lora_data` pipeline (a child run, cached by the repositories' heads) gives
   the assertion rows and their cross-repo and in-repo splits.
2. base: `base_model` (a directory or hub id), or the tiny default pre-trained on the training
   repositories' source minus their held-out test files (`workloads.code2lora.base`), cached by
   what it read; the default split's base ships in `data/code2lora-base/` (`python -m
   pipelines.code2lora --set train.max_steps=1` rebuilds it when missing). Frozen in every arm.
3. encode: each repository's non-test Python files through the base, or the HF embedding model
   `encoder` (mean hidden states per chunk, per file, [mean; max] over files, L2-normalised),
   cached per (base, head); for evo (`history_every` > 0) also each repository at its first
   mined commit and every later mined commit's diff without test files, embedded the same way.
4. train: `arm` and every arm in `baselines` (`workloads.code2lora.arms`): static, evo and
   shared on Ray Train (`train.num_workers` ranks over gloo or NCCL, data parallel, ranks checked
   identical at the end); per_repo as one Ray task per training repository, with the same step
   budget; none trains nothing. A seeded `validation_share` of the training test functions is
   never trained on: its target NLL is reported every `train.eval_every` steps as `val_nll`,
   what `rayworks tune code2lora` selects on.
5. evaluate (a Ray task): greedy completions, exact match after normalisation and the target's
   mean token NLL, per split (in_repo: held-out test files of training repositories; cross_repo:
   held-out repositories) and per repository, for every arm; a table, a plot and `arm`'s
   adapters as peft directories (`PeftModel.from_pretrained` loads them) in MLflow.

At the default scale (three small repositories, a 1M-parameter base pre-trained for minutes)
exact match stays near zero for every arm; the target NLL is the measurement that moves.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import ClassVar

import torch

from pipelines.launch import (
    ProgressLines,
    RunFields,
    RunSummary,
    Workers,
    check_ranks_in_sync,
    ending_run,
    main_for,
    open_run,
    remote_task,
    say,
    storage_path,
    train_run_config,
    train_worker_context,
    worker_device,
)
from workloads import tracking
from workloads.caching import COMMITTED_ROOT, cached_directory, committed_entry, stable_hash
from workloads.code2lora.arms import ARMS, TRAINED_ON_RAY_TRAIN
from workloads.code2lora.base import PretrainConfig
from workloads.code2lora.hypernet import HypernetConfig
from workloads.code2lora.mining import MiningConfig
from workloads.config import ConfigError, from_dict, require, to_dict
from workloads.lm import TinyLMConfig

PIPELINE = "code2lora"
REGISTERED_MODEL = "rayworks-code2lora"  # the static hypernetwork and its base, for `rayworks serve adapter`
# Exact match stays near zero at the default scale (module docstring), so the run's headline is
# the held-out target NLL (lower is better); `--metric em_in_repo` compares exact match.
KEY_METRIC = "nll_in_repo"
TUNE_METRIC, TUNE_MODE = "val_nll", "min"  # searches select on held-out training functions, never the test splits
THREATS = (
    "three small repositories by default: exact match on tens of held-out assertions moves in steps of 0.02-0.03",
    "the tiny base sees only the training repositories' source; on a cluster, a real code LM changes what the adapters must add",
)
QUICKSTART = ["train.num_workers=2"]  # the default's learning test also checks that the two ranks end identical
SPLITS = ("in_repo", "cross_repo")
COMMITTED_BASES = COMMITTED_ROOT / "code2lora-base"


@dataclasses.dataclass
class TrainConfig(Workers):
    """Ray Train workers and the optimisation of every trained arm."""

    batch_size: int = 16  # rows per worker per step
    lr: float = 1e-3  # AdamW peak learning rate
    warmup_steps: int = 20  # linear warm-up, then cosine decay
    max_steps: int = 60  # optimiser steps, per_repo: per repository (more overfits the default 213 training rows)
    max_grad_norm: float = 1.0  # gradient clipping norm
    log_every: int = 10  # steps between logged losses
    eval_every: int = 20  # steps between validation NLLs (reported to Ray Train, so to Tune)

    section: ClassVar[str] = "train"

    def validate(self) -> None:
        super().validate()
        require(self.strategy == "ddp", "strategy", "code2lora trains small adapters: ddp only")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.lr > 0, "lr", "must be > 0")
        require(self.max_steps >= 1, "max_steps", "must be >= 1")
        require(self.log_every >= 1, "log_every", "must be >= 1")
        require(self.eval_every >= 1, "eval_every", "must be >= 1")


@dataclasses.dataclass
class Config(RunFields):
    """Code2LoRA: which arm to train and report, on which repositories and base."""

    arm: str = "static"  # the arm reported as the run's metrics: static, evo, shared, per_repo or none
    baselines: list[str] = dataclasses.field(default_factory=lambda: ["none"])  # arms also trained and evaluated in the same run (the table)
    repos: str = ""  # a directory of bundles and/or git checkouts; empty: the bundled data/code-repos
    cross_repo_test: int = 1  # whole repositories held out (chosen by the seed)
    validation_share: float = 0.1  # training test functions (seeded) kept out of training: their NLL is val_nll, what tune selects on
    history_every: int = 0  # the evolving track (evo needs it): mine every k-th commit that changes Python files
    base_model: str = ""  # a saved model directory or hub id (frozen); empty: the tiny base pre-trained here
    register_model: bool = True  # register a trained static hypernetwork (with its base) in MLflow's registry
    prompt_tokens: int = 192  # a prefix keeps its last tokens (the assertion's side)
    max_new_tokens: int = 24  # completion budget at evaluation
    encoder: str = ""  # the repository encoder: an HF embedding model (directory or hub id); empty: the frozen base's hidden states
    encoder_chunk_tokens: int = 256  # tokens per encoded file chunk
    # Decoder layers of the encoder whose states encode (0: all): the encoder reads every token of a
    # repository, so this is most of an adapter's cost (`python -m benchmarks.adapter_generation`)
    encoder_layers: int = 2
    num_actors: int = 2  # mining actors
    mining: MiningConfig = dataclasses.field(default_factory=MiningConfig)
    model: TinyLMConfig = dataclasses.field(default_factory=TinyLMConfig)
    pretrain: PretrainConfig = dataclasses.field(default_factory=PretrainConfig)
    hypernet: HypernetConfig = dataclasses.field(default_factory=HypernetConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    section: ClassVar[str] = "code2lora"

    def validate(self) -> None:
        require(self.arm in ARMS, "arm", f"expected one of {', '.join(ARMS)}, got {self.arm!r}")
        unknown = sorted(set(self.baselines) - set(ARMS))
        require(not unknown, "baselines", f"unknown arms {unknown}; expected some of {', '.join(ARMS)}")
        require(self.history_every >= 0, "history_every", "must be >= 0 (0: HEAD only)")
        require(0.0 <= self.validation_share < 1.0, "validation_share", "must be in [0, 1)")
        require("evo" not in self.arms() or self.history_every >= 1, "history_every",
                "the evo arm reads the commit history: set history_every >= 1 (every k-th commit that changes Python files)")
        require(self.prompt_tokens >= 8, "prompt_tokens", "must be >= 8")
        require(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        require(self.encoder_chunk_tokens >= 8, "encoder_chunk_tokens", "must be >= 8")
        require(self.encoder_layers >= 0, "encoder_layers", "must be >= 0 (0: all layers)")
        require(self.base_model or self.prompt_tokens + self.max_new_tokens <= self.model.max_positions, "prompt_tokens",
                f"prompt_tokens + max_new_tokens must fit model.max_positions ({self.model.max_positions})")

    def arms(self) -> list[str]:
        return list(dict.fromkeys([self.arm, *self.baselines]))


def step_budget(config: Config) -> tuple[int, int]:
    """(steps, validation interval) of the reported arm's Ray Train run: what ASHA counts."""
    if config.arm not in TRAINED_ON_RAY_TRAIN or config.validation_share <= 0:
        raise ConfigError(f"code2lora: tune needs arm in {', '.join(TRAINED_ON_RAY_TRAIN)} (got {config.arm!r}) "
                          f"and validation_share > 0 (got {config.validation_share}): trials are chosen on val_nll")
    return config.train.max_steps, config.train.eval_every


# ---- data ---------------------------------------------------------------------------------

def read_rows(rows_dir: str, every_commit: bool = False) -> list[dict]:
    """The mined rows at each repository's last mined commit (HEAD), or at every mined commit
    (what evo trains on), in a stable order."""
    import pyarrow.dataset as pds

    rows = pds.dataset(Path(rows_dir) / "rows").to_table().to_pylist()
    last = defaultdict(int)
    for row in rows:
        last[row["repo_id"]] = max(last[row["repo_id"]], row["commit_index"])
    rows = [row for row in rows if every_commit or row["commit_index"] == last[row["repo_id"]]]
    return sorted(rows, key=lambda r: (r["repo_id"], r["commit_index"], r["test_file"], r["test_function"], r["prefix"], r["target"]))


def read_commits(rows_dir: str) -> dict[str, list[dict]]:
    """repository -> its mined commits in order ({commit_sha, diff}); empty without history."""
    import pyarrow.dataset as pds

    if not (Path(rows_dir) / "commits").is_dir():
        return {}
    commits = defaultdict(list)
    for row in sorted(pds.dataset(Path(rows_dir) / "commits").to_table().to_pylist(), key=lambda r: (r["repo_id"], r["commit_index"])):
        commits[row["repo_id"]].append(row)
    return dict(commits)


def split_of(row: dict) -> str:
    if row["cross_repo_split"] == "test":
        return "cross_repo"
    return "in_repo" if row["in_repo_split"] == "test" else "train"


def is_validation(row: dict, config: "Config") -> bool:
    """A training row of a validation test function: seeded by (file, function), so a function's
    rows at every commit stay on one side; never trained on, scored as val_nll."""
    from workloads.code2lora.mining import file_rank

    return file_rank(config.seed, row["repo_id"], f"validation\0{row['test_file']}\0{row['test_function']}") < config.validation_share


def trained_and_validation_rows(rows: list[dict], config: "Config") -> tuple[list[dict], list[dict]]:
    training = [r for r in rows if split_of(r) == "train"]
    return [r for r in training if not is_validation(r, config)], [r for r in training if is_validation(r, config)]


# ---- stage 2 and 3: the base and the repository vectors (Ray tasks) ---------------------------

def task_device(config: "Config") -> torch.device:
    """A Ray task's device: the GPU Ray gave it (`train.use_gpu`), else the CPU."""
    return torch.device("cuda" if config.train.use_gpu and torch.cuda.is_available() else "cpu")


def pretrain_task(repositories: list[dict], config: dict, out_dir: str) -> str:
    """Pre-train the tiny base on the training repositories' source and save it to `out_dir`."""
    from workloads.code2lora.base import pretrain_base, pretraining_sources
    from workloads.code2lora.repos import open_repository

    config = from_dict(Config, config)
    torch.set_num_threads(max(1, int(config.train.cpus_per_worker)))
    texts = []
    for repo in repositories:
        opened = open_repository(repo["source"], Path(tempfile.gettempdir()) / "rayworks-code2lora-repos")
        texts += pretraining_sources(opened, repo["head"], config.seed, repo["held_out"]).values()
    model, tokenizer = pretrain_base(texts, config.model, config.pretrain, config.seed, device=task_device(config))
    model.cpu().save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def encoder_or_error(encoder: str, base_dir: str, layers: int = 0):
    from workloads.code2lora.base import keep_first_layers, load_encoder

    try:
        model, tokenizer = load_encoder(encoder, base_dir)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"encoder: cannot load {encoder!r} as an HF model with its tokenizer ({str(exc)[:300]})") from None
    if layers:
        try:
            keep_first_layers(model, layers)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return model, tokenizer


def encode_task(base_dir: str, encoder: str, repositories: list[dict], chunk_tokens: int, layers: int = 0) -> dict[str, list[float]]:
    """Every repository's vector (`workloads.code2lora.base.encode_repository`)."""
    from workloads.code2lora.base import encode_repository, encoder_sources
    from workloads.code2lora.repos import open_repository

    model, tokenizer = encoder_or_error(encoder, base_dir, layers)
    vectors = {}
    for repo in repositories:
        opened = open_repository(repo["source"], Path(tempfile.gettempdir()) / "rayworks-code2lora-repos")
        texts = list(encoder_sources(opened, repo["head"]).values())
        if not texts:
            raise ConfigError(f"repos: {repo['repo_id']} has no non-test Python file to encode")
        vectors[repo["repo_id"]] = encode_repository(model, tokenizer, texts, chunk_tokens).tolist()
    return vectors


def history_task(base_dir: str, encoder: str, repositories: list[dict], commits: dict[str, list[dict]],
                 chunk_tokens: int, layers: int = 0) -> dict[str, dict]:
    """Every repository's history vectors (`workloads.code2lora.base.encode_history`)."""
    from workloads.code2lora.base import encode_history
    from workloads.code2lora.repos import open_repository

    model, tokenizer = encoder_or_error(encoder, base_dir, layers)
    history = {}
    for repo in repositories:
        opened = open_repository(repo["source"], Path(tempfile.gettempdir()) / "rayworks-code2lora-repos")
        # by commit_index: a commit the miner could not read keeps its place (an empty diff, zeros);
        # a repository with no mined commit at all starts from HEAD and has no history
        mined = {c["commit_index"]: c for c in commits.get(repo["repo_id"], [])}
        first = mined[min(mined)]["commit_sha"] if mined else repo["head"]
        diffs = [mined[index]["diff"] if index in mined else "" for index in range(1, max(mined, default=0) + 1)]
        start, diffs = encode_history(model, tokenizer, opened, first, diffs, chunk_tokens)
        history[repo["repo_id"]] = {"start": start.tolist(), "diffs": diffs.tolist()}
    return history


def base_key(config: Config, training: list[dict]) -> str:
    return stable_hash([to_dict(config.model), to_dict(config.pretrain), config.seed,
                        sorted((r["repo_id"], r["head"], r["held_out"]) for r in training)])


def prepare_base(config: Config, repositories: list[dict], payload: dict) -> tuple[str, str]:
    """(directory or id of the frozen base, its cache key): the committed default, the cache, or
    a fresh pre-training run on the training repositories."""
    import ray

    if config.base_model:
        return config.base_model, stable_hash([config.base_model])
    training = [r for r in repositories if r["cross_repo_split"] == "train"]
    key = base_key(config, training)
    if committed := committed_entry("code2lora-base", key):
        return str(committed), key
    target = Path(storage_path(config.storage_path)) / "code2lora-base" / key

    def build(directory: Path) -> None:
        say(payload, f"[code2lora] pre-training the base on {', '.join(r['repo_id'] for r in training)} "
                     f"({config.pretrain.steps} steps)")
        task = remote_task(pretrain_task, num_cpus=config.train.cpus_per_worker, num_gpus=int(config.train.use_gpu))
        ray.get(task.remote(training, to_dict(config), str(directory)))

    return str(cached_directory(target, build)), key


def cached_encodings(config: Config, repositories: list[dict], key_parts: list, encode) -> dict:
    """Per repository, what `encode(missing repositories)` returns (run as one Ray task), cached
    as JSON under `storage_path/code2lora-encodings/`, keyed by `key_parts` and the head."""
    import ray

    cache = Path(storage_path(config.storage_path)) / "code2lora-encodings"
    keys = {r["repo_id"]: stable_hash([*key_parts, config.encoder, config.encoder_chunk_tokens, config.encoder_layers, r["head"]]) for r in repositories}
    found = {name: json.loads((cache / f"{k}.json").read_text()) for name, k in keys.items() if (cache / f"{k}.json").is_file()}
    missing = [r for r in repositories if r["repo_id"] not in found]
    if missing:
        fresh = ray.get(remote_task(encode, num_cpus=1).remote(missing))
        cache.mkdir(parents=True, exist_ok=True)
        for name, value in fresh.items():
            (cache / f"{keys[name]}.json").write_text(json.dumps(value))
        found.update(fresh)
    return found


def repository_vectors(config: Config, base_dir: str, key: str, repositories: list[dict]) -> dict[str, list[float]]:
    """Every repository's vector, cached per (base, encoder settings, head)."""
    return cached_encodings(config, repositories, [key],
                            lambda missing: encode_task(base_dir, config.encoder, missing, config.encoder_chunk_tokens,
                                                        config.encoder_layers))


def history_vectors(config: Config, base_dir: str, key: str, repositories: list[dict], rows_dir: str) -> dict[str, dict]:
    """Evo's input per repository ({start, diffs}), cached per (base, encoder, head, history_every)."""
    commits = read_commits(rows_dir)
    return cached_encodings(config, repositories, [key, config.history_every, "history"],
                            lambda missing: history_task(base_dir, config.encoder, missing, commits,
                                                         config.encoder_chunk_tokens, config.encoder_layers))


# ---- stage 4: training --------------------------------------------------------------------

def make_trainee(arm: str, base, config: Config, common: dict):
    """The arm's trainee over `base`, with the repository vectors (and histories) in `common`."""
    from workloads.code2lora.arms import EvoTrainee, LoRATrainee, StaticTrainee

    if arm == "static":
        return StaticTrainee(base, config.hypernet, torch.tensor(common["vectors"]), seed=config.seed)
    if arm == "evo":
        histories = [common["history"][name] for name in common["names"]]
        lengths = torch.tensor([len(h["diffs"]) for h in histories])
        diffs = torch.zeros(len(histories), max(1, int(lengths.max())), len(histories[0]["start"]))
        for index, history in enumerate(histories):
            if history["diffs"]:
                diffs[index, :len(history["diffs"])] = torch.tensor(history["diffs"])
        starts = torch.tensor([h["start"] for h in histories])
        return EvoTrainee(base, config.hypernet, starts, diffs, lengths, seed=config.seed)
    return LoRATrainee(base, config.hypernet, seed=config.seed)


def training_data(tokenizer, rows: list[dict], names: list[str], prompt_tokens: int):
    """(tokenized rows, {repo_index, commit_index} per row)."""
    from workloads.sft import tokenize_examples

    data = tokenize_examples(tokenizer, [r["prefix"] for r in rows], [r["target"] for r in rows], 0, prompt_tokens)
    index = {name: i for i, name in enumerate(names)}
    return data, {"repo_index": torch.tensor([index[r["repo_id"]] for r in rows]),
                  "commit_index": torch.tensor([r["commit_index"] for r in rows])}


def row_nll(trainee, data, where: dict[str, torch.Tensor], batch_size: int = 32) -> list[float]:
    """Each row's mean target-token NLL under the trainee's adapters (no gradient)."""
    from workloads.sft import masked_token_cross_entropy

    nll = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            part = slice(start, start + batch_size)
            logits = trainee(data.input_ids[part], data.attention_mask[part], where["repo_index"][part], where["commit_index"][part])
            labels = data.labels[part]
            nll += [float(masked_token_cross_entropy(logits[i:i + 1], labels[i:i + 1])) for i in range(len(labels))]
    return nll


def fit(trainee, engine, data, where: dict[str, torch.Tensor], config: Config, rank: int, world_size: int, log,
        validate=lambda step, loss: None) -> float:
    """The shared training loop of every trained arm: seeded batches by global step, target CE;
    `validate(step, loss)` every `train.eval_every` steps and at the end."""
    from workloads.code2lora.arms import batch_loss
    from workloads.sft import batch_at, batch_indices

    train, loss = config.train, float("nan")
    for step in range(train.max_steps):
        indices = batch_indices(step, train.batch_size, world_size, rank, len(data), config.seed)
        batch = batch_at(data, indices)
        batch.update({name: values[indices] for name, values in where.items()})
        loss_tensor = batch_loss(engine.module, batch)
        engine.step(loss_tensor)
        loss = float(loss_tensor.detach())
        if (step + 1) % train.log_every == 0 or step + 1 == train.max_steps:
            log(step + 1, loss, engine.lr)
        if (step + 1) % train.eval_every == 0 and step + 1 < train.max_steps:
            validate(step + 1, loss)
    return loss


def train_loop_per_worker(payload: dict) -> None:
    """Ray Train worker: one trained arm (static, evo or shared) on the training rows; the
    validation rows' NLL reported every `train.eval_every` steps."""
    import ray.train

    from workloads.lm import load_lm
    from workloads.sft import warmup_cosine

    config: Config = from_dict(Config, payload["config"])
    arm = payload["arm"]
    rank, world_size, run = train_worker_context(payload)
    base, tokenizer = load_lm(payload["base_dir"])
    trainee = make_trainee(arm, base, config, payload)
    rows, validation_rows = trained_and_validation_rows(read_rows(payload["rows_dir"], every_commit=arm == "evo"), config)
    train = config.train
    engine = train.engine(trainee, lambda ps: torch.optim.AdamW([p for p in ps if p.requires_grad], lr=train.lr, weight_decay=0.0),
                          schedule=warmup_cosine(train.warmup_steps, train.max_steps), max_grad_norm=train.max_grad_norm)
    device = worker_device(train)

    def log(step: int, loss: float, lr: float) -> None:
        if rank == 0:
            run.log_metrics({f"train_loss/{arm}": loss, f"lr/{arm}": lr}, step=step)
            if step % (10 * train.log_every) == 0 or step == train.max_steps:
                say(payload, f"[code2lora] {arm} step {step}/{train.max_steps}  loss {loss:.4f}")

    def on_device(rows: list[dict]):
        tokens, indices = training_data(tokenizer, rows, payload["names"], config.prompt_tokens)
        return tokens.to(device), {k: v.to(device) for k, v in indices.items()}

    validation = on_device(validation_rows) if validation_rows else None

    def validate(step: int) -> dict:
        """val_nll on every rank (each holds the same replica; Tune reads rank 0's report)."""
        if validation is None:
            return {}
        nll = row_nll(engine.model, *validation)
        if rank == 0:
            run.log_metrics({f"val_nll/{arm}": sum(nll) / len(nll)}, step=step)
        return {"val_nll": sum(nll) / len(nll)}

    def report(step: int, loss: float) -> None:
        ray.train.report({"train_loss": loss, "step": step, **validate(step)})

    loss = fit(trainee, engine, *on_device(rows), config, rank, world_size, log, report)
    fingerprints = check_ranks_in_sync(engine, None, train.max_steps)
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            run.log_metrics({f"ranks_in_sync/{arm}": float(len(set(fingerprints)) == 1)}, step=train.max_steps)
            run.set_tags({f"rayworks.rank_fingerprints.{arm}": json.dumps(fingerprints)})
            torch.save(engine.model.trained_state(), Path(directory) / "trained.pt")
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report({"train_loss": loss, "step": train.max_steps, **validate(train.max_steps)}, checkpoint=checkpoint)


def train_on_ray_train(arm: str, config: Config, common: dict, run_name: str, callbacks) -> dict[str, torch.Tensor]:
    from ray.train.torch import TorchTrainer

    with ProgressLines() as lines:
        trainer = TorchTrainer(train_loop_per_worker,
                               train_loop_config={**common, "arm": arm, "progress": lines.queue},
                               scaling_config=config.train.scaling_config(),
                               run_config=train_run_config(config, f"{run_name}-{arm}", callbacks))
        result = trainer.fit()
    with result.checkpoint.as_directory() as directory:
        return torch.load(Path(directory) / "trained.pt", weights_only=True)


def per_repo_task(common: dict, repo_id: str) -> dict[str, torch.Tensor]:
    """One repository's own LoRA (the adapter trainers), one process, the shared loop."""
    from workloads.lm import load_lm
    from workloads.sft import warmup_cosine
    from workloads.strategies import LocalEngine

    config: Config = from_dict(Config, common["config"])
    torch.set_num_threads(1)
    base, tokenizer = load_lm(common["base_dir"])
    trainee = make_trainee("per_repo", base, config, common)
    rows = [r for r in trained_and_validation_rows(read_rows(common["rows_dir"]), config)[0] if r["repo_id"] == repo_id]
    data, where = training_data(tokenizer, rows, common["names"], config.prompt_tokens)
    train, device = config.train, task_device(config)
    engine = LocalEngine(trainee, lambda ps: torch.optim.AdamW([p for p in ps if p.requires_grad], lr=train.lr, weight_decay=0.0),
                         schedule=warmup_cosine(train.warmup_steps, train.max_steps), max_grad_norm=train.max_grad_norm, device=device)
    fit(trainee, engine, data.to(device), {k: v.to(device) for k, v in where.items()}, config, 0, 1, lambda *_: None)
    return trainee.adapter()


def train_per_repo(config: Config, common: dict, training_repos: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    import ray

    task = remote_task(per_repo_task, num_cpus=config.train.cpus_per_worker, num_gpus=int(config.train.use_gpu))
    return dict(zip(training_repos, ray.get([task.remote(common, name) for name in training_repos])))


# ---- stage 5: evaluation (a Ray task) -----------------------------------------------------

def score_rows(model, tokenizer, adapter, rows: list[dict], config: Config) -> tuple[list[str], list[bool], list[float]]:
    """(greedy completions, exact matches, target NLL per row) of one repository's rows with
    `adapter` in the peft model's slots (None: the base alone)."""
    from workloads.code2lora.arms import complete, exact_matches
    from workloads.lm import device_of
    from workloads.sft import masked_token_cross_entropy, tokenize_examples

    predictions = complete(model, tokenizer, adapter, [r["prefix"] for r in rows], config.max_new_tokens, config.prompt_tokens)
    hits = exact_matches(predictions, [r["target"] for r in rows])
    data = tokenize_examples(tokenizer, [r["prefix"] for r in rows], [r["target"] for r in rows], 0, config.prompt_tokens)
    device = device_of(model)
    with torch.no_grad():  # the slots hold `adapter` (loaded by `complete`)
        logits = model(input_ids=data.input_ids.to(device), attention_mask=data.attention_mask.to(device)).logits
    labels = data.labels.to(device)
    nll = [float(masked_token_cross_entropy(logits[i:i + 1], labels[i:i + 1])) for i in range(len(rows))]
    return predictions, hits, nll


def evaluate_task(common: dict, trained: dict, export_arm: str, out_dir: str) -> dict:
    """Every arm on every held-out row: exact match and target NLL per split and repository;
    `export_arm`'s adapters written as peft directories under `out_dir/adapters/`, and a trained
    static hypernetwork as `out_dir/generator/` (what the `adapter` Serve app loads)."""
    from workloads.code2lora.arms import save_generator
    from workloads.code2lora.hypernet import write_adapter
    from workloads.lm import load_lm

    config: Config = from_dict(Config, common["config"])
    torch.set_num_threads(max(1, int(config.train.cpus_per_worker)))
    base, tokenizer = load_lm(common["base_dir"])
    base.to(task_device(config))
    names = common["names"]
    held_out = [r for r in read_rows(common["rows_dir"]) if split_of(r) in SPLITS]
    results, samples = {}, []
    for arm in config.arms():
        trainee = make_trainee(arm, copy.deepcopy(base), config, common)  # peft wraps a model in place: one copy per arm
        if arm in TRAINED_ON_RAY_TRAIN:
            trainee.load_trained(trained[arm])
        adapters = {}
        for index, name in enumerate(names):
            if arm in TRAINED_ON_RAY_TRAIN:
                adapters[name] = trainee.adapter_for(index)
            elif arm == "per_repo":
                adapters[name] = trained["per_repo"].get(name)  # none for a held-out repository
            else:
                adapters[name] = None
        for name in names:
            rows = [r for r in held_out if r["repo_id"] == name]
            if not rows or (arm == "per_repo" and adapters[name] is None):
                continue
            predictions, hits, nll = score_rows(trainee.model, tokenizer, adapters[name], rows, config)
            for row, prediction, hit, row_nll in zip(rows, predictions, hits, nll):
                results.setdefault(arm, []).append({"repo_id": name, "split": split_of(row), "em": float(hit), "nll": row_nll})
                if arm == export_arm and len(samples) < 30:
                    samples.append({"repo_id": name, "split": split_of(row), "target": row["target"],
                                    "prediction": prediction, "exact_match": hit})
        if arm == export_arm and arm != "none":
            for name in names:
                if adapters[name] is not None:
                    write_adapter(trainee.model, adapters[name], Path(out_dir) / "adapters" / name)
        if arm == "static":
            save_generator(Path(out_dir) / "generator", trainee, base, tokenizer, config.hypernet,
                           {"encoder": config.encoder, "encoder_chunk_tokens": config.encoder_chunk_tokens,
                            "encoder_layers": config.encoder_layers, "prompt_tokens": config.prompt_tokens,
                            "max_new_tokens": config.max_new_tokens})
    return {"results": results, "samples": samples}


def summarise(results: dict[str, list[dict]]) -> dict[str, float]:
    """Means per arm, split (and repository): `em_<split>/<arm>`, `nll_<split>/<arm>`, `..._<repo>`."""
    metrics = {}
    for arm, rows in results.items():
        groups = defaultdict(list)
        for row in rows:
            groups[(row["split"], "")].append(row)
            groups[(row["split"], row["repo_id"])].append(row)
        for (split, repo), group in groups.items():
            suffix = f"/{arm}" + (f"/{repo}" if repo else "")
            metrics[f"em_{split}{suffix}"] = sum(r["em"] for r in group) / len(group)
            metrics[f"nll_{split}{suffix}"] = sum(r["nll"] for r in group) / len(group)
    return metrics


def plan_repositories(config: Config):
    """(the mining child's config, one task per repository: id, head, splits), sorted by id."""
    from pipelines import code2lora_data

    data_config = code2lora_data.Config(seed=config.seed, experiment=config.experiment, storage_path=config.storage_path,
                                        repos=config.repos, cross_repo_test=config.cross_repo_test, history_every=config.history_every,
                                        num_actors=config.num_actors, mining=config.mining)
    scratch = Path(tempfile.gettempdir()) / "rayworks-code2lora-repos"
    tasks = code2lora_data.plan_tasks(data_config, scratch, Counter(), {})
    return data_config, sorted({t["repo_id"]: t for t in tasks}.values(), key=lambda t: t["repo_id"])


# ---- the recipe ---------------------------------------------------------------------------

def run(config: Config, *, resume: bool = False, parent_run_id: str | None = None, train_callbacks=()) -> RunSummary:
    import ray

    from pipelines import code2lora_data

    data_config, repositories = plan_repositories(config)
    run_record, run_name = open_run(PIPELINE, config, resume=resume, parent_run_id=parent_run_id,
                                    data_hash=stable_hash(sorted((r["repo_id"], r["head"]) for r in repositories)))
    with ending_run(run_record):
        payload, seconds, clock = {"progress": None}, {}, time.monotonic()

        def stage_done(stage: str) -> None:  # wall time per stage, logged as seconds/<stage>
            nonlocal clock
            seconds[f"seconds/{stage}"], clock = time.monotonic() - clock, time.monotonic()

        mined = code2lora_data.run(data_config, parent_run_id=run_record.run_id)  # 1. mine (cached)
        stage_done("mine")
        rows = read_rows(mined.artifacts)
        names = [r["repo_id"] for r in repositories]
        training_repos = sorted({r["repo_id"] for r in rows if split_of(r) == "train"})
        require(training_repos, "repos", "no training row: every repository is held out or has no minable assertion")
        base_dir, key = prepare_base(config, repositories, payload)  # 2. base (committed or cached)
        stage_done("base")
        vectors = repository_vectors(config, base_dir, key, repositories)  # 3. encode (cached)
        history = history_vectors(config, base_dir, key, repositories, mined.artifacts) if "evo" in config.arms() else {}
        stage_done("encode")
        common = {"config": to_dict(config), "base_dir": base_dir, "rows_dir": mined.artifacts, "names": names,
                  "vectors": [vectors[n] for n in names], "history": history,
                  "mlflow_run_id": run_record.run_id, "mlflow_uri": run_record.uri}
        trained = {}
        for arm in config.arms():  # 4. train
            if arm in TRAINED_ON_RAY_TRAIN:
                # Tune follows the reported arm's training; the baselines train beside it
                trained[arm] = train_on_ray_train(arm, config, common, run_name, train_callbacks if arm == config.arm else ())
            elif arm == "per_repo":
                trained[arm] = train_per_repo(config, common, training_repos)
        stage_done("train")
        # 5. evaluate; adapters and generator go to the storage path, which a cluster's nodes share
        out_dir = Path(storage_path(config.storage_path)) / "code2lora-runs" / run_record.run_id
        task = remote_task(evaluate_task, num_cpus=config.train.cpus_per_worker, num_gpus=int(config.train.use_gpu))
        outcome = ray.get(task.remote(common, trained, config.arm, str(out_dir)))
        for part in ("adapters", "generator"):
            if (out_dir / part).is_dir():
                run_record.log_artifact(out_dir / part, part)
        if config.register_model and (out_dir / "generator").is_dir():
            tracking.register_model(run_record, "generator", REGISTERED_MODEL)
        stage_done("evaluate")
        metrics = summarise(outcome["results"])
        log_outcome(run_record, config, {**metrics, **seconds}, outcome, rows, config.train.max_steps)
    before = metrics.get(f"{KEY_METRIC}/none")
    return RunSummary(PIPELINE, KEY_METRIC, metrics.get(f"{KEY_METRIC}/{config.arm}", float("nan")), run_record.run_id,
                      run_record.artifact_uri, before=before,
                      extra={name: value for name, value in metrics.items() if name.count("/") == 1})


def log_outcome(run_record, config: Config, metrics: dict, outcome: dict, rows: list[dict], step: int) -> None:
    """Metrics (the reported arm's also without the arm suffix), a table, a plot, samples."""
    from workloads.plots import plot_bars

    for split in SPLITS:
        for kind in ("em", "nll"):
            name = f"{kind}_{split}"
            if f"{name}/{config.arm}" in metrics:
                metrics[name] = metrics[f"{name}/{config.arm}"]
    counts = Counter(split_of(r) for r in rows)
    counts["validation"] = sum(is_validation(r, config) for r in rows if split_of(r) == "train")  # within train
    run_record.log_metrics({**metrics, **{f"rows_{split}": counts[split] for split in ("train", "validation", *SPLITS)}}, step=step)
    arms = config.arms()
    lines = ["| arm | " + " | ".join(f"EM {s} | NLL {s}" for s in SPLITS) + " |", "|---" * (1 + 2 * len(SPLITS)) + "|"]
    for arm in arms:
        cells = []
        for split in SPLITS:
            em, nll = metrics.get(f"em_{split}/{arm}"), metrics.get(f"nll_{split}/{arm}")
            cells += [f"{em:.3f}" if em is not None else "n/a", f"{nll:.3f}" if nll is not None else "n/a"]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    run_record.log_text(table, "results.md")
    run_record.log_text("".join(json.dumps(s) + "\n" for s in outcome["samples"]), "samples.jsonl")
    with tempfile.TemporaryDirectory() as scratch:
        for kind, label in (("em", "exact match"), ("nll", "target NLL (nats/token)")):
            bars = {split: {arm: metrics[f"{kind}_{split}/{arm}"] for arm in arms if f"{kind}_{split}/{arm}" in metrics}
                    for split in SPLITS}
            run_record.log_artifact(plot_bars(bars, Path(scratch) / f"{kind}.png", f"code2lora {label}"))
    print(table)


def main(argv: list[str] | None = None) -> int:
    return main_for(PIPELINE, Config, run, argv)


if __name__ == "__main__":
    from pipelines.code2lora import main as importable_main  # Ray pickles by reference

    sys.exit(importable_main())
