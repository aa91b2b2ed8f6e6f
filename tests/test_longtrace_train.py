"""`rayworks compare` and `rayworks tune` over the longtrace pipeline, and its bad input. (The
embedded default itself, learning included, is checked on the quickstart's run: tests/test_quickstart.py.)"""

from pathlib import Path

from tests.helpers import mlflow_client, rayworks, result_lines

# A small world and very short stages: the plumbing, not the learning.
TINY = ["data.kg.num_questions=60", "sft.steps=30", "grpo.steps=2", "eval_every=2",
                                     "probe_samples=1", "grpo.group_size=2", "grpo.prompts_per_step=2",
                                     "register_model=false", "data.num_actors=1"]


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
    # one reader SFT per seed: the arm that ran first SFT-ed it, the other took it from the cache
    for seed in ("0", "1"):
        runs = [c for c in children if c.data.params["seed"] == seed]
        sft_ran = ["sft_loss" in c.data.metrics for c in runs]
        assert sorted(sft_ran) == [False, True], [(c.data.params["reward"], c.data.tags.get("reader_sft")) for c in runs]
        (cached,) = [c for c, ran in zip(runs, sft_ran) if not ran]
        assert cached.data.tags["reader_sft"].startswith("cached "), cached.data.tags


def test_tune_over_eta_and_tier_ratio(workdir: Path):
    space = workdir / "space.yaml"
    space.write_text("space:\n  eta: {grid: [0.0, 0.3]}\n  data.context.tier1_share: {choice: [0.4, 0.6]}\n")
    proc = rayworks(workdir, "tune", "longtrace", "--space", str(space), "--num-samples", "1", "--max-concurrent", "1",
                    "--set", *TINY, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (outcome,) = result_lines(proc.stdout)
    assert outcome["num_trials"] == 2 and outcome["errors"] == 0 and outcome["metric"] == "val_accuracy_tiered"


def test_bad_input_names_the_field(workdir: Path):
    missing = rayworks(workdir, "run", "longtrace", "--set", "data_dir=/nonexistent/longtrace", timeout=300)
    assert missing.returncode == 2 and "data_dir" in missing.stderr and "longtrace_data" in missing.stderr
    bad = rayworks(workdir, "run", "longtrace", "--set", "reward=judge", timeout=120)
    assert bad.returncode == 2 and "reward" in bad.stderr
