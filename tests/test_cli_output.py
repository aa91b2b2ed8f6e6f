"""The CLI as a user meets it: `rayworks config`, fields that `compare` and `tune` set refused in
`--set`, exit codes, `--num-cpus`, and a short run's console output (one clean line per
progress step, a before/after summary, none of Ray's or the libraries' internals)."""

import dataclasses
import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines import PIPELINES, get_pipeline
from tests.helpers import mlflow_client, rayworks, result_lines, scratch_env


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_config_prints_every_field_with_its_help_and_loads_back(workdir: Path, pipeline: str, capsys, monkeypatch):
    from cluster.cli import main

    assert main(["config", pipeline]) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line and not line.startswith("#")]
    assert all("  # " in line and line.split("  # ", 1)[1].strip() for line in lines), [l for l in lines if "  # " not in l]
    assert yaml.safe_load(printed) == dataclasses.asdict(get_pipeline(pipeline).Config())  # the defaults, exactly
    (workdir / "printed.yaml").write_text(printed)
    assert main(["config", pipeline, "--config", str(workdir / "printed.yaml"), "--set", "seed=7"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["seed"] == 7


@pytest.mark.parametrize("command", [[], ["run"], ["submit"], ["tune"], ["serve"], ["compare"], ["quickstart"], ["config"]])
def test_help_prints_for_every_command(command: list, capsys):
    from cluster.cli import main

    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: rayworks")


def test_config_of_an_unknown_pipeline_or_field_is_named(workdir: Path):
    proc = rayworks(workdir, "config", "sft", "--set", "train.nonsense=1", timeout=120)
    assert proc.returncode == 2 and "sft.train.nonsense: unknown field" in proc.stderr, proc.stderr


def test_compare_and_tune_refuse_a_set_field_they_set_themselves(workdir: Path):
    compare = rayworks(workdir, "compare", "sft", "--vary", "train.lr=0.1,0.2", "--seeds", "3", "--set", "seed=1", timeout=120)
    assert compare.returncode == 2 and "--set seed: compare sets seed" in compare.stderr, compare.stderr
    varied = rayworks(workdir, "compare", "sft", "--vary", "train.lr=0.1,0.2", "--set", "train.lr=0.3", timeout=120)
    assert varied.returncode == 2 and "--set train.lr: compare sets train.lr" in varied.stderr, varied.stderr
    (workdir / "space.yaml").write_text("space:\n  train.lr: {choice: [0.1, 0.2]}\n")
    tune = rayworks(workdir, "tune", "sft", "--space", "space.yaml", "--set", "train.lr=0.3", timeout=120)
    assert tune.returncode == 2 and "--set train.lr: the search samples train.lr" in tune.stderr, tune.stderr


def test_a_bad_cpu_count_is_a_config_error(workdir: Path):
    proc = rayworks(workdir, "run", "sft", "--num-cpus", "0", timeout=120)
    assert proc.returncode == 2 and "--num-cpus" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    env = scratch_env(workdir, RAYWORKS_NUM_CPUS="many")
    proc = subprocess.run(["rayworks", "run", "sft"], cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "RAYWORKS_NUM_CPUS" in proc.stderr, proc.stderr


INTERNALS = ["RayTrainWorker", "TrainController", "PreemptionWatcher", "real_accelerator", "Reporting training result",
             "Token authentication", "PlacementGroupCleaner", "Traceback", "mlflow.store"]


def test_a_short_run_prints_each_progress_line_once_and_its_metric_before_and_after(workdir: Path):
    env = scratch_env(workdir, RAYWORKS_NUM_CPUS="3")  # local Ray's CPUs from the environment
    proc = subprocess.run(["rayworks", "run", "sft", "--set", "train.max_steps=20", "train.eval_every=10",
                           "train.checkpoint_every=20", "task.num_eval=20", "register_model=false"],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    assert [line for line in out if line.startswith("[sft]")] == [
        line for line in out if line.startswith("[sft] step 10/20") or line.startswith("[sft] step 20/20")]
    assert sum(line.startswith("[sft] step 10/20") for line in out) == 1 and len(out) == len(set(out))
    for internal in INTERNALS:
        assert internal not in proc.stdout + proc.stderr, internal
    header = next(line for line in out if line.startswith("pipeline"))
    assert header.split()[:4] == ["pipeline", "metric", "before", "after"]
    (summary,) = result_lines(proc.stdout)
    row = next(line for line in out if line.startswith("sft "))
    assert row.split()[2:4] == [f"{summary['before']:.4f}", f"{summary['value']:.4f}"]  # the table shows both
    history = mlflow_client(workdir).get_metric_history(summary["run_id"], "eval_accuracy")
    assert summary["before"] == min(history, key=lambda m: m.step).value  # before = the untrained evaluation
    assert mlflow_client(workdir).get_run(summary["run_id"]).data.tags["ray_cluster_cpus"] == "3"
