"""`train.strategy` through the sft pipeline on Ray Train with two CPU workers over gloo, and
portable checkpoints: one run resumed under FSDP at another worker count (the optimizer comes
back), then under DeepSpeed ZeRO-3 (another strategy: a fresh optimizer, said in MLflow). The
distil and longtrace pipelines run sharded in tests/test_two_ranks.py, DDP in
tests/test_cli_sft.py, every strategy and ZeRO stage without Ray in tests/test_strategies.py."""

from pathlib import Path

import pytest
import torch

from tests.helpers import assert_both_ranks_hold, mlflow_client, rayworks, result_lines, saved_model_fingerprint

SFT = ["task.num_train=200", "task.num_eval=10", "train.eval_every=4", "train.checkpoint_every=4", "train.batch_size=8",
       "register_model=false", "run_name=sharded"]


def run_part(workdir: Path, *overrides: str, resume: bool) -> tuple[dict, str]:
    proc = rayworks(workdir, "run", "sft", *(["--resume"] if resume else []), "--set", *SFT, *overrides, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (result,) = result_lines(proc.stdout)
    return result, proc.stdout


def test_sft_resumes_across_worker_counts_and_strategies(workdir: Path):
    client = mlflow_client(workdir)
    first, _ = run_part(workdir, "train.strategy=fsdp", "train.num_workers=2", "train.max_steps=4", resume=False)
    run_id = first["run_id"]
    assert_both_ranks_hold(client, run_id, saved_model_fingerprint(client, run_id, workdir))

    # The checkpoint is a save_pretrained directory plus the whole optimizer state by parameter name.
    checkpoint = sorted(p for p in (workdir / "ray_results" / "sharded").glob("checkpoint_*") if p.is_dir())[-1]
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=False)
    assert (checkpoint / "model" / "config.json").is_file() and saved["strategy"] == "fsdp"
    assert float(next(iter(saved["optimizer"]["state"].values()))["step"]) == 4

    _, log = run_part(workdir, "train.strategy=fsdp", "train.num_workers=1", "train.max_steps=8", resume=True)
    assert "optimizer starts fresh" not in log
    assert "rayworks.optimizer_reset" not in client.get_run(run_id).data.tags

    _, log = run_part(workdir, "train.strategy=deepspeed", "train.zero_stage=3", "train.num_workers=2", "train.max_steps=12",
                      resume=True)
    assert "optimizer starts fresh" in log
    reset = client.get_run(run_id).data.tags["rayworks.optimizer_reset"]
    assert "'fsdp'" in reset and "'deepspeed'" in reset
    assert_both_ranks_hold(client, run_id, saved_model_fingerprint(client, run_id, workdir))

    resumed_from = [int(m.value) for m in client.get_metric_history(run_id, "resumed_from_step")]
    assert resumed_from == [0, 4, 8]
    losses = {int(m.step): m.value for m in client.get_metric_history(run_id, "train_loss")}
    assert losses[12] < losses[4]  # the three parts are one training run


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the sharded strategies over NCCL")
def test_sharded_strategies_on_gpus(workdir: Path):
    workers = min(2, torch.cuda.device_count())
    for strategy in (["train.strategy=fsdp"], ["train.strategy=deepspeed", "train.zero_stage=3"]):
        proc = rayworks(workdir, "run", "sft", "--set", *SFT[:-1], f"run_name=gpu-{strategy[-1][-1]}", "train.use_gpu=true",
                        f"train.num_workers={workers}", "train.max_steps=4", *strategy, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
