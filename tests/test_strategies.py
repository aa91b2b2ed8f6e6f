"""The training strategies over real gloo process groups (no Ray): DDP, FSDP2, DeepSpeed ZeRO 1-3
(with and without CPU offload) and the unwrapped replica engine take the same optimiser step as
plain single-process AdamW on the ranks' pooled loss; sharded
models generate in step across ranks; the optimizer state saved from two ranks loads exactly
into one and into three; the Hugging Face Trainer accepts the same `train.strategy`."""

import pytest
import torch

from tests.helpers import spawn_ranks

# (strategy, ZeRO stage, offload); the key names each run's saved file
# "replica" is not a `train.strategy`: the unwrapped engine of warm starts (a longtrace reader's SFT)
STRATEGIES = [("ddp", 2, False), ("fsdp", 2, False), ("fsdp", 2, True), ("deepspeed", 1, False), ("deepspeed", 2, False),
              ("deepspeed", 3, False), ("deepspeed", 3, True), ("replica", 2, False)]


def run_key(strategy: str, stage: int, offload: bool) -> str:
    return f"{strategy}{stage}{'-offload' if offload else ''}"

STEPS, LR, MAX_GRAD_NORM = 3, 1e-2, 0.5


def tiny_model():
    from workloads.lm import TinyLMConfig, tiny_lm

    return tiny_lm(TinyLMConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128), seed=0)


def batch(step: int, rank: int) -> torch.Tensor:
    return torch.randint(3, 250, (4, 12), generator=torch.Generator().manual_seed(1000 * step + rank))


def make_optimizer(parameters):
    return torch.optim.AdamW(parameters, lr=LR, weight_decay=0.01)


def schedule(step: int) -> float:
    return min(1.0, (step + 1) / 2)


def _train_under_each_strategy(rank: int, save_to: str) -> dict:
    from workloads.distributed import parameter_fingerprint
    from workloads.lm import sample_groups
    from workloads.strategies import ReplicaEngine, build_engine

    out = {}
    for strategy, stage, offload in STRATEGIES:
        model, tokenizer = tiny_model()
        if strategy == "replica":
            engine = ReplicaEngine(model, make_optimizer, schedule=schedule, max_grad_norm=MAX_GRAD_NORM)
        else:
            engine = build_engine(strategy, model, make_optimizer, schedule=schedule, max_grad_norm=MAX_GRAD_NORM,
                                  zero_stage=stage, offload=offload)
        for step in range(STEPS):
            ids = batch(step, rank)
            engine.step(engine.module(input_ids=ids, labels=ids).loss)
        # Ranks ask for different lengths: a sharded model's ranks must keep generating together.
        sample_groups(engine.model, tokenizer, ["12+3="], 2, max_new_tokens=12 if rank == 0 else 3, generator_seed=rank,
                      synced=engine.sharded)
        whole, optimizer = engine.whole_state(), engine.optimizer_state()
        if rank == 0:
            torch.save({"weights": whole, "optimizer": optimizer}, f"{save_to}/{run_key(strategy, stage, offload)}.pt")
        out[run_key(strategy, stage, offload)] = parameter_fingerprint(engine.whole_state(everywhere=True))
    return out


def _pooled_adamw_reference() -> dict[str, torch.Tensor]:
    """What two data-parallel ranks must compute, written without any strategy code: one process,
    the mean of the two ranks' losses, torch's AdamW, clipping and schedule."""
    model, _ = tiny_model()
    optimizer = make_optimizer(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    for step in range(STEPS):
        loss = sum(model(input_ids=batch(step, rank), labels=batch(step, rank)).loss for rank in range(2)) / 2
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    return {k: v.detach() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = tmp_path_factory.mktemp("strategies")
    fingerprints = spawn_ranks(_train_under_each_strategy, directory, str(directory))
    return directory, fingerprints


def test_every_strategy_takes_the_pooled_adamw_step(trained):
    directory, _ = trained
    expected = _pooled_adamw_reference()
    initial = tiny_model()[0].state_dict()
    for strategy, stage, offload in STRATEGIES:
        weights = torch.load(directory / f"{run_key(strategy, stage, offload)}.pt", weights_only=False)["weights"]
        assert set(weights) == set(expected), strategy
        moved = max(float((weights[k] - initial[k]).abs().max()) for k in expected)
        error = max(float((weights[k] - expected[k]).abs().max()) for k in expected)
        # Reduction order differs between strategies; a rank that missed the all-reduce is off by ~lr.
        assert moved > 1e-3 and error < 1e-4, (strategy, stage, offload, moved, error)


def test_every_strategy_ends_with_both_ranks_holding_the_same_weights(trained):
    _, (rank0, rank1) = trained
    assert rank0 == rank1 and set(rank0) == {run_key(*run) for run in STRATEGIES}


def test_the_optimizer_state_is_whole_and_named_by_parameter(trained):
    directory, _ = trained
    names = set(tiny_model()[0].state_dict()) - {"lm_head.weight"}  # tied to the embeddings
    reference = torch.load(directory / "ddp2.pt", weights_only=False)["optimizer"]
    for run in STRATEGIES:
        saved = torch.load(directory / f"{run_key(*run)}.pt", weights_only=False)["optimizer"]
        strategy = run[0]
        state = saved["optimizer"]["state"]
        assert saved["strategy"] == strategy and names <= set(state)
        assert all(float(state[name]["step"]) == STEPS for name in names)
        assert saved["scheduler"]["last_epoch"] == STEPS
        for name in names:  # the same moments as DDP's, gathered whole from the shards
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.allclose(state[name][key], reference["optimizer"]["state"][name][key], rtol=1e-4, atol=1e-7), (strategy, name)


def _load_and_save_again(rank: int, strategy: str, stage: int, path: str, save_to: str) -> float:
    from workloads.strategies import build_engine

    model, _ = tiny_model()
    engine = build_engine(strategy, model, make_optimizer, schedule=schedule, max_grad_norm=MAX_GRAD_NORM, zero_stage=stage)
    engine.load_optimizer_state(torch.load(path, weights_only=False)["optimizer"])
    state = engine.optimizer_state()
    if rank == 0:
        torch.save(state, save_to)
    return engine.lr


@pytest.mark.parametrize("world_size", [1, 3])
def test_optimizer_state_from_two_ranks_resumes_exactly_at_another_worker_count(trained, tmp_path, world_size):
    directory, _ = trained
    for strategy, stage in [("fsdp", 2), ("deepspeed", 2), ("deepspeed", 3)]:
        path = directory / f"{run_key(strategy, stage, False)}.pt"
        saved = torch.load(path, weights_only=False)["optimizer"]
        again = tmp_path / f"{strategy}{stage}-again.pt"
        lr = spawn_ranks(_load_and_save_again, tmp_path, strategy, stage, str(path), str(again), world_size=world_size)[0]
        loaded = torch.load(again, weights_only=False)
        assert lr == pytest.approx(LR * schedule(STEPS))  # the schedule resumed at its step
        for name, moments in saved["optimizer"]["state"].items():
            for key in ("step", "exp_avg", "exp_avg_sq"):
                assert torch.equal(loaded["optimizer"]["state"][name][key].float(), moments[key].float()), (strategy, name, key)


def test_the_same_strategy_section_configures_hugging_face_s_trainer(tmp_path):
    from transformers import TrainingArguments

    from workloads.strategies import trainer_arguments

    zero3 = TrainingArguments(output_dir=str(tmp_path), **trainer_arguments("deepspeed", zero_stage=3, offload=True))
    assert zero3.deepspeed["zero_optimization"]["stage"] == 3
    assert zero3.deepspeed["zero_optimization"]["offload_optimizer"] == {"device": "cpu"}
    fsdp = TrainingArguments(output_dir=str(tmp_path), **trainer_arguments("fsdp", offload=True))
    assert fsdp.fsdp and fsdp.fsdp_config["version"] == 2 and fsdp.fsdp_config["cpu_offload"] is True
    with pytest.raises(ValueError, match="strategy 'zero'"):
        trainer_arguments("zero")
