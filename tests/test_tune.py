"""`rayworks tune`: a 2-trial ASHA search, one MLflow parent run with a child per trial; code2lora's
trials chosen on its validation NLL."""

from pathlib import Path

import pytest

from tests.helpers import mlflow_client, rayworks, result_lines


def test_two_trial_search_is_tracked_as_parent_and_children(workdir: Path):
    space = workdir / "space.yaml"
    space.write_text(
        "metric: eval_accuracy\nmode: max\nspace:\n"
        "  train.lr: {grid: [0.003, 0.0003]}\n"
    )
    proc = rayworks(workdir, "tune", "sft", "--space", str(space), "--num-samples", "1",
                    "--set", "train.max_steps=60", "train.eval_every=30", "train.checkpoint_every=60",
                    "register_model=false", "task.num_eval=50", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (outcome,) = result_lines(proc.stdout)
    assert outcome["num_trials"] == 2 and outcome["errors"] == 0
    assert outcome["best_params"]["train.lr"] in (0.003, 0.0003)

    client = mlflow_client(workdir)
    experiment = client.get_experiment_by_name("rayworks-sft")
    parent = client.get_run(outcome["parent_run_id"])
    assert parent.data.tags["rayworks.tune"] == "parent" and parent.info.status == "FINISHED"
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 2
    assert sorted(float(c.data.params["train.lr"]) for c in children) == [0.0003, 0.003]
    for child in children:
        assert "eval_accuracy" in child.data.metrics
        # a trial ran to the end, or ASHA stopped it and the search marked it so
        assert child.info.status == "FINISHED" or child.data.tags.get("rayworks.stopped_early") == "asha"
    assert parent.data.metrics["best_eval_accuracy"] == max(c.data.metrics["eval_accuracy"] for c in children)


def test_space_with_unknown_field_fails_before_ray(workdir: Path):
    space = workdir / "space.yaml"
    space.write_text("space:\n  train.learning_rate: {choice: [0.1]}\n")
    proc = rayworks(workdir, "tune", "sft", "--space", str(space), timeout=120)
    assert proc.returncode == 2 and "sft.train.learning_rate: unknown field" in proc.stderr
    space.write_text("space:\n  train.lr: {gaussian: [0.1]}\n")
    proc = rayworks(workdir, "tune", "sft", "--space", str(space), timeout=120)
    assert proc.returncode == 2 and "space.train.lr: expected one of" in proc.stderr


def test_a_pipeline_without_a_training_loop_is_refused(workdir: Path):
    from pipelines.tuning import load_space
    from workloads.config import ConfigError

    space = workdir / "space.yaml"
    space.write_text("space:\n  context.tier1_share: {choice: [0.3, 0.5]}\n")
    with pytest.raises(ConfigError, match="longtrace_data: has no training loop"):
        load_space(space, "longtrace_data", None, [])


def test_code2lora_trials_are_chosen_on_validation_nll_not_the_test_splits(workdir: Path):
    space = workdir / "space.yaml"
    space.write_text("space:\n  hypernet.rank: {grid: [2, 4]}\n")  # metric and mode: the pipeline's val_nll, min
    proc = rayworks(workdir, "tune", "code2lora", "--space", str(space), "--num-samples", "1",
                    "--set", "train.max_steps=4", "train.eval_every=2", "baselines=[]", "register_model=false",
                    "max_new_tokens=2", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (outcome,) = result_lines(proc.stdout)
    assert outcome["num_trials"] == 2 and outcome["errors"] == 0 and outcome["metric"] == "val_nll"
    client = mlflow_client(workdir)
    children = client.search_runs([client.get_experiment_by_name("rayworks-code2lora").experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{outcome['parent_run_id']}'")
    trials = [c for c in children if c.data.tags.get("rayworks.pipeline") == "code2lora"]
    assert len(trials) == 2
    # the search took the lowest validation NLL the trials reported, never a test-split metric
    assert outcome["best_value"] == pytest.approx(min(c.data.metrics["val_nll/static"] for c in trials), rel=1e-9)


def test_tri_trials_are_chosen_on_validation_repairs_not_the_held_out_problems(workdir: Path):
    space = workdir / "space.yaml"
    space.write_text("space:\n  repair.window: {grid: [2]}\n")  # metric: the pipeline's val_repair_accuracy
    proc = rayworks(workdir, "tune", "tri", "--space", str(space), "--num-samples", "1",
                    "--set", "train.draft_steps=2", "train.infiller_steps=2", "train.dpo_steps=1", "train.dpo_prompts=4",
                    "repair.problems=4", "repair.rounds=1", "eval_quadruples=4", "validation_problems=6", "register_model=false",
                    # the python family: its steps are checked in the sandbox from the train worker and the Ray Data actors
                    "traces.task=python", "traces.num_train=200", "traces.num_eval=20",
                    timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (outcome,) = result_lines(proc.stdout)
    assert outcome["num_trials"] == 1 and outcome["errors"] == 0 and outcome["metric"] == "val_repair_accuracy"
    client = mlflow_client(workdir)
    children = client.search_runs([client.get_experiment_by_name("rayworks-tri").experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{outcome['parent_run_id']}'")
    (trial,) = children  # a complete run: ASHA let it finish its repair and logging
    assert trial.data.params["repair.window"] == "2" and trial.info.status == "FINISHED"
    assert "tri/accuracy_after" in trial.data.metrics and trial.data.params["traces.task"] == "python"
    assert "tri/checker_errors_per_problem" in trial.data.metrics
    assert outcome["best_value"] == trial.data.metrics["val_repair_accuracy"]
