"""Every trainable LM and robot pipeline with two Ray Train workers over gloo, on tokenizers shaped
like real checkpoints' (Qwen2: no BOS; Qwen2-chat: a chat template): each run finishes, and
both ranks end with the parameters the run saved; distil's rlvr and self_distil arms shard the student with FSDP
and longtrace its reader with DeepSpeed ZeRO-3 (rollouts generate in step across ranks). (`sft`
with two workers: test_cli_sft.py, and under every strategy test_sft_strategies.py.)"""

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    assert_both_ranks_hold,
    mlflow_client,
    rayworks,
    result_lines,
    saved_model_fingerprint,
    state_fingerprint,
)

# The student SFT-ed long enough (150 steps, once: it is cached) that rlvr's groups have reward spread.
DISTIL = ["student_sft_steps=150", "iterations=2", "eval_every=2", "prompts_per_iteration=4", "eval_problems=10",
          "eval_samples=2", "register_model=false", "train.num_workers=2", "model.tokenizer=qwen2-chat"]


def run_ok(workdir: Path, pipeline: str, *overrides: str, timeout: float = 600) -> dict:
    proc = rayworks(workdir, "run", pipeline, "--set", *overrides, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (result,) = result_lines(proc.stdout)
    return result


def test_distil_token_step_rlvr_and_self_distil_with_two_workers_the_last_two_sharded_by_fsdp(workdir: Path):
    client = mlflow_client(workdir)
    arms = (["level=token", "expert.kind=recovering_oracle"], ["level=step"],
            ["objective=rlvr", "kl_coef=0.05", "train.strategy=fsdp"], ["objective=self_distil", "train.strategy=fsdp"])
    for arm in arms:
        result = run_ok(workdir, "distil", *DISTIL, *arm)  # the SFT-ed student is cached after the first
        assert_both_ranks_hold(client, result["run_id"], saved_model_fingerprint(client, result["run_id"], workdir))
        if "objective=rlvr" in arm:  # the k3 KL to the frozen starting student entered the loss
            assert max(m.value for m in client.get_metric_history(result["run_id"], "kl")) > 0
        else:
            assert client.get_run(result["run_id"]).data.metrics["labelled_states"] > 0


def test_longtrace_with_two_workers_under_zero3_a_chat_reader_and_reference_kl(workdir: Path):
    from workloads.lm import TinyLMConfig, build_tiny_lm

    reader = build_tiny_lm(TinyLMConfig(tokenizer="qwen2-chat", hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                                        intermediate_size=128, max_positions=1024), workdir / "chat-reader")
    result = run_ok(workdir, "longtrace", "data.kg.num_questions=40", "data.context.budget_tokens=220", "sft.steps=10",
                    "grpo.steps=2", "eval_every=2", "probe_samples=1", "grpo.group_size=2", "grpo.prompts_per_step=2",
                    "grpo.max_new_tokens=16", "register_model=false", "data.num_actors=1", "train.num_workers=2",
                    "grpo.kl_coef=0.1", "train.strategy=deepspeed", "train.zero_stage=3", f"model_init={reader}", timeout=900)
    client = mlflow_client(workdir)
    assert_both_ranks_hold(client, result["run_id"], saved_model_fingerprint(client, result["run_id"], workdir))
    samples = client.download_artifacts(result["run_id"], "samples.jsonl", str(workdir))
    assert all("<|im_start|>" not in json.loads(line)["response"] for line in Path(samples).read_text().splitlines())


def test_ppo_with_two_learners(workdir: Path):
    result = run_ok(workdir, "ppo", "iterations=2", "eval_every=2", "num_rollout_workers=1", "envs_per_worker=8",
                    "steps_per_iteration=25", "render=false", "train.num_workers=2")
    client = mlflow_client(workdir)
    policy = client.download_artifacts(result["run_id"], "policy/policy.pt", str(workdir))
    assert_both_ranks_hold(client, result["run_id"], state_fingerprint(torch.load(policy, weights_only=False)["state_dict"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: train.use_gpu moves model and batches to the GPU")
def test_sft_and_distil_on_a_gpu(workdir: Path):
    run_ok(workdir, "sft", "train.use_gpu=true", "train.max_steps=20", "train.eval_every=20", "train.checkpoint_every=20",
           "task.num_eval=20", "register_model=false")
    run_ok(workdir, "distil", *[o for o in DISTIL if o != "train.num_workers=2"], "train.use_gpu=true", "expert.kind=oracle")
