"""`rayworks run longtrace`: data built on demand, reader SFT, GRPO with the rubric reward on
Ray Train, evaluations in MLflow; `rayworks compare` and `rayworks tune` over it."""

from pathlib import Path

from tests.helpers import mlflow_client, rayworks, result_lines

# A small world and very short stages: the plumbing, not the learning.
TINY = ["data.kg.num_questions=60", "sft.steps=30", "grpo.steps=2", "eval_every=2",
                                     "probe_samples=1", "grpo.group_size=2", "grpo.prompts_per_step=2",
                                     "register_model=false", "data.num_actors=1"]


def test_grpo_improves_the_policy_on_its_prompts_and_everything_is_tracked(workdir: Path):
    proc = rayworks(workdir, "run", "longtrace", timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (summary,) = result_lines(proc.stdout)
    before, after = summary["extra"]["before_grpo"], summary["extra"]["after_grpo"]
    # What GRPO optimises: the sampled accuracy on the prompts it trains on (fixed seed, margin).
    assert after["grpo_prompts_sampled_accuracy"] >= before["grpo_prompts_sampled_accuracy"] + 0.15, summary
    # The reader learned the task in SFT at all (untrained: 0).
    assert before["eval_accuracy_tiered"] >= 0.15

    client = mlflow_client(workdir)
    run = client.get_run(summary["run_id"])
    for metric in ("eval_accuracy_tiered", "eval_accuracy_random", "difficulty_gap", "eval_rubric_recall_tiered",
                   "before_grpo/eval_accuracy_tiered", "before_grpo/eval_accuracy_random", "sft_loss", "clip_fraction"):
        assert metric in run.data.metrics, metric
    rewards = client.get_metric_history(summary["run_id"], "reward")
    assert len(rewards) == 30 and all(0.0 <= m.value <= 1.0 for m in rewards)
    assert run.data.params["reward"] == "rubric" and run.data.params["grpo.clip_high"] == "0.28"
    artifacts = {a.path for a in client.list_artifacts(summary["run_id"])}
    assert {"model", "learning_curve.png", "samples.jsonl", "config.yaml"} <= artifacts
    # the data set was built once, by a child run of the data pipeline, into the cache
    data_dir = Path(summary["extra"]["data_dir"])
    assert (data_dir / "BUILT").is_file() and (data_dir / "tiered").is_dir() and (data_dir / "random").is_dir()
    data_runs = client.search_runs([client.get_experiment_by_name("rayworks-longtrace_data").experiment_id])
    assert [r.data.tags.get("mlflow.parentRunId") for r in data_runs] == [summary["run_id"]]


def test_compare_rubric_and_outcome_over_seeds_reports_mean_and_interval(workdir: Path):
    proc = rayworks(workdir, "compare", "longtrace", "--vary", "reward=rubric,outcome", "--seeds", "2",
                    "--metric", "eval_accuracy_tiered", "--metric", "grpo_prompts_sampled_accuracy",
                    "--set", *TINY, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    outcome = result_lines(proc.stdout)[-1]
    for arm in ("rubric", "outcome"):
        row = outcome["arms"][arm]["eval_accuracy_tiered"]
        assert len(row["values"]) == 2 and row["mean"] == sum(row["values"]) / 2
        low, high = row["ci95"]
        assert low <= row["mean"] <= high
    client = mlflow_client(workdir)
    parent = client.get_run(outcome["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert "rubric/eval_accuracy_tiered/mean" in parent.data.metrics
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.data.params["reward"] for c in children) == ["outcome", "outcome", "rubric", "rubric"]


def test_tune_over_eta_and_tier_ratio(workdir: Path):
    space = workdir / "space.yaml"
    space.write_text("space:\n  eta: {grid: [0.0, 0.3]}\n  data.context.tier1_share: {choice: [0.4, 0.6]}\n")
    proc = rayworks(workdir, "tune", "longtrace", "--space", str(space), "--num-samples", "1", "--max-concurrent", "1",
                    "--set", *TINY, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (outcome,) = result_lines(proc.stdout)
    assert outcome["num_trials"] == 2 and outcome["errors"] == 0 and outcome["metric"] == "eval_accuracy_tiered"


def test_bad_input_names_the_field(workdir: Path):
    missing = rayworks(workdir, "run", "longtrace", "--set", "data_dir=/nonexistent/longtrace", timeout=300)
    assert missing.returncode == 2 and "data_dir" in missing.stderr and "longtrace_data" in missing.stderr
    bad = rayworks(workdir, "run", "longtrace", "--set", "reward=judge", timeout=120)
    assert bad.returncode == 2 and "reward" in bad.stderr
