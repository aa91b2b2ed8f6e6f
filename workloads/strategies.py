"""Training strategies behind one interface: DDP, FSDP2 and DeepSpeed ZeRO 1-3, and a portable
optimizer state that resumes at any worker count.

A pipeline builds an engine once (`build_engine`) and then only calls `engine.module(...)` for
the training forward, `engine.step(loss)` for backward + clipping + optimizer + schedule,
`engine.full_model()` for a whole-weights model on rank 0 (evaluation, checkpoints),
`engine.whole_state(everywhere=True)` for the ranks' fingerprints, and
`engine.optimizer_state()` / `engine.load_optimizer_state(...)` for resumption; it never
branches on the strategy. Why this small layer rather than one library: Ray Train's
`prepare_model` covers DDP and FSDP1 only, and FSDP2 and DeepSpeed each have their own wrap,
step and save APIs; the engines below are thin adapters onto exactly those APIs (`fully_shard`,
`torch.distributed.checkpoint.state_dict`, `deepspeed.initialize`, `deepspeed.utils.safe_*`).

Sharded strategies (FSDP, ZeRO-3) make every forward a collective: all ranks must run the same
number of forwards, so generation on them passes `synced=engine.sharded` (Hugging Face's
`synced_gpus`), and evaluation runs on `full_model()`, never on a rank-0-only forward.

The optimizer state is saved whole, keyed by parameter name (`{"state": {name: {"step",
"exp_avg", "exp_avg_sq"}}, "param_groups": [...]}`, torch's own full-state-dict layout), so
it loads into any number of ranks. Gathering it on rank 0 costs that rank the optimizer's full
size in CPU memory while saving; at the scale where that matters, switch `optimizer_state`
to `torch.distributed.checkpoint` shards.

Pipelines that train through Hugging Face's Trainer (TRL) get the same `train.strategy`
through `trainer_arguments`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import ClassVar

import torch
import torch.distributed as dist

MakeOptimizer = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
Schedule = Callable[[int], float]  # step -> learning-rate factor (torch's LambdaLR)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Engine:
    """One training strategy (see the module docstring); subclasses wrap `model` in `__init__`."""

    name: ClassVar[str]
    sharded: ClassVar[bool] = False  # parameters are split over ranks: every forward is a collective

    module: torch.nn.Module  # call the training forward on this (the wrapper, where there is one)
    model: torch.nn.Module  # the Hugging Face model inside it
    optimizer: torch.optim.Optimizer  # the torch optimizer that holds the state
    scheduler: torch.optim.lr_scheduler.LRScheduler | None

    def __init__(self, model, make_optimizer: MakeOptimizer, *, schedule: Schedule | None = None,
                 max_grad_norm: float = 1.0, device: torch.device | None = None, zero_stage: int = 2,
                 offload: bool = False):
        self.max_grad_norm = max_grad_norm
        self.rank, self.world_size = _world()
        self._wrap(model.to(device or torch.device("cpu")), make_optimizer, zero_stage, offload)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule) if schedule else None

    def _wrap(self, model, make_optimizer: MakeOptimizer, zero_stage: int, offload: bool) -> None:
        raise NotImplementedError

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self, loss: torch.Tensor) -> None:
        """Backward, clip to `max_grad_norm`, optimizer step, schedule step; gradients cleared."""
        loss.backward()
        self._reduce_gradients()
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()

    def _reduce_gradients(self) -> None:
        """Where gradients are not reduced by a wrapper's backward hooks, reduce them here."""

    def whole_state(self, everywhere: bool = False) -> dict[str, torch.Tensor]:
        """The whole weights as CPU tensors by name, on rank 0 ({} on the others) or, with
        `everywhere`, on every rank. A collective."""
        if self.rank == 0 or everywhere:
            return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return {}

    def full_model(self) -> torch.nn.Module | None:
        """Rank 0: a plain model holding the current whole weights (the model itself when the
        weights are not split, else a replica refreshed on each call); None elsewhere. A collective."""
        if not self.sharded:
            return self.model if self.rank == 0 else None
        state = self.whole_state()
        return self._replica(state) if self.rank == 0 else None

    def optimizer_state(self) -> dict | None:
        """The whole optimizer state keyed by parameter name on rank 0, None elsewhere. A collective."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        state = get_optimizer_state_dict(self.module, self.optimizer,
                                         options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self._with_scheduler(state) if self.rank == 0 else None

    def load_optimizer_state(self, saved: dict) -> None:
        """Load `optimizer_state()` output (from any number of ranks) on every rank."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(self.module, self.optimizer, saved["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
        self._load_scheduler(saved)

    def _with_scheduler(self, optimizer_state: dict) -> dict:
        return {"strategy": self.name, "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict() if self.scheduler else None}

    def _load_scheduler(self, saved: dict) -> None:
        if self.scheduler is not None and saved.get("scheduler"):
            self.scheduler.load_state_dict(saved["scheduler"])
            # A scheduler's state holds its position only; the rate the optimizer uses is set here.
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
                group["lr"] = lr

    def load_schedule_only(self, saved: dict) -> None:
        """Resume the learning-rate schedule's position without the optimizer's moments."""
        self._load_scheduler(saved)

    def _replica(self, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        """A plain CPU copy of the model's architecture holding `state` (built once, refreshed after)."""
        if getattr(self, "_replica_model", None) is None:
            from transformers import AutoModelForCausalLM

            self._replica_model = AutoModelForCausalLM.from_config(self.model.config)
            if getattr(self.model, "generation_config", None) is not None:
                self._replica_model.generation_config = self.model.generation_config
        self._replica_model.load_state_dict(state, strict=False)  # tied weights may appear once
        return self._replica_model.eval()


class DDPEngine(Engine):
    """Data parallel: whole replicas, gradients all-reduced in backward (torch DDP, as Ray
    Train's `prepare_model` would wrap it); one rank without a process group trains plainly."""

    name = "ddp"

    def _wrap(self, model, make_optimizer, zero_stage, offload) -> None:
        self.model = model
        self.module = model
        if self.world_size > 1:
            device = next(model.parameters()).device  # any module, not only a Hugging Face model
            device_ids = [device.index] if device.type == "cuda" else None
            self.module = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        self.optimizer = make_optimizer(model.parameters())


class LocalEngine(Engine):
    """This process's own model and optimizer, outside any process group: training that every
    rank repeats identically on the same data (a warm start), and single-process use."""

    name = "local"

    def _wrap(self, model, make_optimizer, zero_stage, offload) -> None:
        self.model = self.module = model
        self.optimizer = make_optimizer(model.parameters())


class ReplicaEngine(LocalEngine):
    """Data parallel without a wrapper: every rank trains its own whole model on its share of
    each batch, and gradients are averaged (one all-reduce) before each step, so the replicas stay
    identical. For a warm start after which the run's strategy wraps the same model: a DDP or
    FSDP wrapper would leave its hooks on the parameters."""

    name = "replica"

    def _reduce_gradients(self) -> None:
        if self.world_size == 1:
            return
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in parameters:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()


class FSDPEngine(Engine):
    """FSDP2 (`torch.distributed.fsdp.fully_shard`): each transformer block, then the root, is
    sharded over the ranks; parameters are gathered per block for its forward and backward.
    `offload` keeps the sharded parameters and optimizer state in CPU memory."""

    name = "fsdp"
    sharded = True

    def _wrap(self, model, make_optimizer, zero_stage, offload) -> None:
        from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

        # Pinned host memory speeds copies to a GPU and needs one to exist.
        options = {"offload_policy": CPUOffloadPolicy(pin_memory=torch.cuda.is_available())} if offload else {}
        for block in transformer_blocks(model):
            fully_shard(block, **options)
        fully_shard(model, **options)
        self.model = self.module = model
        self.optimizer = make_optimizer(model.parameters())

    def whole_state(self, everywhere: bool = False) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=not everywhere))
        return {k: v.detach().cpu() for k, v in state.items()}


class DeepSpeedEngine(Engine):
    """DeepSpeed ZeRO stage 1-3 (`deepspeed.initialize` on the torch optimizer we build):
    stage 1 shards the optimizer state, 2 also the gradients, 3 also the parameters;
    `offload` moves the optimizer state (and at stage 3 the parameters) to CPU memory.
    Requires the process group to exist (Ray Train creates it; `deepspeed.init_distributed`
    then adopts it)."""

    name = "deepspeed"
    MOMENTS = ("exp_avg", "exp_avg_sq")  # AdamW's state besides its step count

    def _wrap(self, model, make_optimizer, zero_stage, offload) -> None:
        import deepspeed

        deepspeed.init_distributed(dist_backend=dist.get_backend() if dist.is_initialized() else "gloo")
        self.zero_stage = zero_stage
        self.sharded = zero_stage == 3
        config = deepspeed_config(zero_stage, offload, self.max_grad_norm)
        engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=make_optimizer(model.parameters()),
                                                          config=config)
        self.engine, self.module, self.model = engine, engine, engine.module
        self.zero_optimizer = ds_optimizer
        self.optimizer = ds_optimizer.optimizer  # the torch optimizer over this rank's flat partitions

    def step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()  # clips (`gradient_clipping`), steps, clears gradients
        if self.scheduler is not None:
            self.scheduler.step()

    def whole_state(self, everywhere: bool = False) -> dict[str, torch.Tensor]:
        if not self.sharded:
            return super().whole_state(everywhere)
        import deepspeed

        keep, state = self.rank == 0 or everywhere, {}
        # keep_vars: the Parameter objects themselves, so a tied weight (lm_head = embeddings) is gathered under both names
        for name, tensor in self.model.state_dict(keep_vars=True).items():
            if isinstance(tensor, torch.nn.Parameter):
                with deepspeed.zero.GatheredParameters([tensor]):  # one at a time: bounded memory
                    if keep:
                        state[name] = tensor.detach().cpu().clone()
            elif keep:
                state[name] = tensor.detach().cpu()
        return state

    def _step_count(self) -> int:
        steps = [int(s["step"]) for s in self.optimizer.state.values() if "step" in s]
        return max(steps, default=0)

    def optimizer_state(self) -> dict | None:
        from deepspeed.utils import safe_get_full_optimizer_state

        self._materialise_state()  # before any step (every group skipped so far): zero moments, step 0
        step, state = self._step_count(), {}
        for name, parameter in self.model.named_parameters():
            moments = {key: safe_get_full_optimizer_state(parameter, key) for key in self.MOMENTS}
            if self.rank == 0 and all(m is not None for m in moments.values()):
                state[name] = {"step": torch.tensor(float(step)), **{k: v.detach().cpu().clone() for k, v in moments.items()}}
        if self.rank != 0:
            return None
        groups = [{k: v for k, v in group.items() if k != "params"} | {"params": list(state)}
                  for group in self.optimizer.param_groups[:1]]
        return self._with_scheduler({"state": state, "param_groups": groups})

    def _materialise_state(self) -> None:
        """Create AdamW's state (zero moments, step 0, as torch's first step would) on this rank's
        partitions, which DeepSpeed only creates in its first step, so there is something to
        load into; then link it to the parameters as DeepSpeed does after that step."""
        # Stage 3 keeps its flat fp32 partitions aside and hands them to the optimizer step by step.
        partitions = getattr(self.zero_optimizer, "fp32_partitioned_groups_flat", None) or [
            p for group in self.optimizer.param_groups for p in group["params"]]
        for partition in partitions:
            if not self.optimizer.state.get(partition):
                self.optimizer.state[partition] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(partition),
                                                   "exp_avg_sq": torch.zeros_like(partition)}
        link = getattr(self.zero_optimizer, "_lazy_init_hp_params_optimizer_state", None)  # stages 1 and 2
        if link is not None:
            link()

    @staticmethod
    def _set_stage3_state(parameter, value: torch.Tensor, key: str) -> None:
        """This rank's slice of a whole optimizer-state tensor, copied into its stage-3 partition.
        Not `safe_set_full_optimizer_state`: in DeepSpeed 0.19 it reads past the end of the value
        on the last rank when the parameter does not split evenly over the ranks (the partitions
        are padded)."""
        zero = parameter._z3_optimizer
        partition, _ = zero._get_fp32_opt_state_partition(parameter, release_swap_buffers=False, optim_state_key=key)
        start = partition.numel() * zero._get_param_partition_rank(parameter)
        piece = value.flatten()[start : start + partition.numel()]
        partition.data.zero_()
        partition.data[: piece.numel()].copy_(piece)

    def load_optimizer_state(self, saved: dict) -> None:
        from deepspeed.utils import safe_set_full_optimizer_state

        self._materialise_state()
        state = saved["optimizer"]["state"]
        for name, parameter in self.model.named_parameters():
            if name in state:
                for key in self.MOMENTS:
                    if self.sharded:
                        self._set_stage3_state(parameter, state[name][key], key)
                    else:
                        safe_set_full_optimizer_state(parameter, state[name][key], key)
        step = max((int(s["step"]) for s in state.values()), default=0)
        for partition_state in self.optimizer.state.values():
            partition_state["step"] = torch.full_like(partition_state["step"], step) if torch.is_tensor(
                partition_state.get("step")) else step
        self._load_scheduler(saved)


STRATEGIES: dict[str, type[Engine]] = {engine.name: engine for engine in (DDPEngine, FSDPEngine, DeepSpeedEngine)}
ZERO_STAGES = (1, 2, 3)


def build_engine(strategy: str, model, make_optimizer: MakeOptimizer, **options) -> Engine:
    """The `strategy` engine around `model` (options: see `Engine.__init__`)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    return STRATEGIES[strategy](model, make_optimizer, **options)


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks, by the class names Hugging Face lists in `_no_split_modules`
    (e.g. `Qwen2DecoderLayer`): the unit FSDP shards and gathers at a time."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [module for module in model.modules() if type(module).__name__ in names]


def deepspeed_config(zero_stage: int, offload: bool, max_grad_norm: float) -> dict:
    """DeepSpeed's config for our loop: we build the optimizer (torch AdamW), batches are ours
    (micro-batch 1 here only satisfies DeepSpeed's batch arithmetic), fp32 weights. Buckets are
    kept small: DeepSpeed's default 5e8-element buckets would cost 2 GB per rank by themselves."""
    zero = {"stage": zero_stage, "reduce_bucket_size": 50_000_000, "allgather_bucket_size": 50_000_000,
            "overlap_comm": False}
    if zero_stage == 3:
        zero.update(stage3_prefetch_bucket_size=10_000_000, stage3_param_persistence_threshold=10_000)
    if offload:
        zero["offload_optimizer"] = {"device": "cpu"}
        if zero_stage == 3:
            zero["offload_param"] = {"device": "cpu"}
    # Offload with our torch AdamW: DeepSpeed would otherwise insist on its own CPU Adam, a C++
    # op compiled on first use (faster on big GPU jobs; the optimizer factory can return it).
    return {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "gradient_clipping": max_grad_norm,
            "zero_optimization": zero, "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
            "steps_per_print": 10**9, "wall_clock_breakdown": False}


def trainer_arguments(strategy: str, zero_stage: int = 2, offload: bool = False, max_grad_norm: float = 1.0) -> dict:
    """`transformers.TrainingArguments` keywords for the same `train.strategy` (TRL's trainers
    take these too); wrap the trainer with `ray.train.huggingface.transformers.prepare_trainer`
    inside the Ray Train worker as usual."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if strategy == "deepspeed":
        config = deepspeed_config(zero_stage, offload, max_grad_norm)
        config.update(train_micro_batch_size_per_gpu="auto", gradient_accumulation_steps="auto", gradient_clipping="auto")
        return {"deepspeed": config, "max_grad_norm": max_grad_norm}
    if strategy == "fsdp":
        # transformers 5's form: `fsdp=True`, the rest in `fsdp_config` (blocks wrapped by `_no_split_modules`)
        return {"fsdp": True, "fsdp_config": {"version": 2, "reshard_after_forward": True, "cpu_offload": offload},
                "max_grad_norm": max_grad_norm}
    return {"max_grad_norm": max_grad_norm}


def release_from_trainer(model: torch.nn.Module) -> torch.nn.Module:
    """Undo what a Hugging Face/TRL trainer patched onto `model` itself: accelerate's fp32 wrapper
    and TRL's fused LM head replace `model.forward` on the instance, and those closures call the
    original module. A deepcopy of a patched model (a warm start, DPO's reference) would keep
    running the original's weights; after this, the class's own forward runs."""
    model.__dict__.pop("forward", None)
    model.__dict__.pop("_original_forward", None)
    return model


def prebuild_deepspeed_ops(timeout_s: float = 900.0) -> None:
    """Compile DeepSpeed's CPU communication op once, in this process, before the workers start.

    On a CPU-only machine `deepspeed.init_distributed` JIT-compiles `deepspeed_shm_comm` into
    torch's extension cache (about a minute, once per machine). Building it here keeps that out
    of the workers' start-up, and a build killed midway leaves a lock file that would make the
    next build wait forever: a lock older than `timeout_s` is such a leftover and is removed."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return
    from torch.utils.cpp_extension import _get_build_directory

    lock = Path(_get_build_directory(builder.absolute_name().split(".")[-1], verbose=False)) / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > timeout_s:
        lock.unlink(missing_ok=True)
    builder.load(verbose=False)
