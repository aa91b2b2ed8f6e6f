"""TempoVLA's options through the whole pipeline (`rayworks run tempovla`, 2 ranks): joint-
velocity demonstrations (the other composable action type) with action chunking. The run must
learn (held-out re-timed joint velocities predicted far better than by predicting no motion),
end with identical ranks, evaluate in joint-velocity mode with the gripper's tracking gap, and
save a policy artifact that says how to play it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import assert_both_ranks_hold, mlflow_client, rayworks, result_lines, state_fingerprint


@pytest.mark.timeout(600)
def test_joint_velocity_demonstrations_with_action_chunks(workdir: Path):
    proc = rayworks(workdir, "run", "tempovla", "--set", "train.num_workers=2", "demos.episodes=16", "demos.action_type=joint_velocity",
                    "policy.chunk=4", "policy.execute=2", "train.steps=400", "eval_envs_per_worker=4", "eval_speeds=[1.0,2.0]",
                    "render=false", "register_model=false", "storage_path=store", timeout=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (summary,) = result_lines(proc.stdout)
    extra = summary["extra"]
    (stats_file,) = (workdir / "store/tempovla-demos").glob("*/meta/stats.json")
    stats = json.loads(stats_file.read_text())["action"]
    assert len(stats["mean"]) == 8  # seven joint velocities and the gripper
    # predicting no motion errs by E[a^2] per joint (from the dataset's own statistics)
    no_motion = float(np.mean(np.square(stats["mean"][:7]) + np.square(stats["std"][:7])))
    assert extra["val_motion_mse/1"] < 0.5 * no_motion, (extra, no_motion)
    assert np.isfinite(extra["tracking_gap_mm/1"]) and extra["tracking_gap_mm/1"] > 0  # measured in joint-velocity mode
    client = mlflow_client(workdir)
    saved = torch.load(Path(client.download_artifacts(summary["run_id"], "policy/policy.pt", str(workdir))), weights_only=False)
    assert_both_ranks_hold(client, summary["run_id"], state_fingerprint(saved["state_dict"]))
    assert (saved["action_mode"], saved["chunk"], saved["execute"], saved["observation_dim"]) == ("joint_velocity", 4, 2, 42)
    assert saved["action_names"][-1] == "gripper" and len(saved["action_names"]) == 8
