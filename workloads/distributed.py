"""Decisions that data-parallel ranks must take together, in plain torch.distributed.

DDP, FSDP and ZeRO all-reduce gradients inside `backward`: a rank that skips a step (nothing
to learn from, an expert that failed on it) while another takes it leaves the other waiting
forever. Every such decision goes through `any_rank` / `all_ranks`, and a rank with nothing
to learn still takes the step with a zero loss (`workloads.lm.zero_loss`). Without an
initialised process group (one worker, unit tests) each function is the identity.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _reduce(value: float, op) -> float:
    if not _active():
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op)
    return float(tensor.item())


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on at least one."""
    return _reduce(float(bool(flag)), dist.ReduceOp.MAX) > 0 if _active() else bool(flag)


def all_ranks(flag: bool) -> bool:
    """True on every rank when it is True on all of them."""
    return _reduce(float(bool(flag)), dist.ReduceOp.MIN) > 0 if _active() else bool(flag)


def mean_over_ranks(value: float) -> float:
    """The mean of `value` over the ranks, on every rank."""
    return _reduce(value, dist.ReduceOp.SUM) / dist.get_world_size() if _active() else float(value)


def average_in_place(tensors: list[torch.Tensor]) -> None:
    """Replace each tensor by its mean over the ranks (gradients, statistics, a KL estimate)."""
    if not _active():
        return
    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.AVG)


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def parameter_fingerprint(module: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """sha256 over a module's state (parameters and buffers, sorted by name, as float32 bytes on
    the CPU) or over a state dict: equal on two ranks exactly when their copies are identical."""
    digest = hashlib.sha256()
    state = module if isinstance(module, dict) else module.state_dict()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()
