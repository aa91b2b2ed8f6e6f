"""What a HANDOFF student is judged on, each against the specialist on its own task."""

from __future__ import annotations

import numpy as np

VOXEL = 0.05  # m


def reachable_workspace(palms: np.ndarray, errors: np.ndarray, tolerance: float = 0.1) -> float:
    """Volume (m^3) of the 5 cm voxels a palm occupied while within `tolerance` of its target:
    how much of the space around the robot its hands were steered to, not merely passed through.
    `palms` (M, 3) positions in the pelvis frame, `errors` (M,) their distances to the targets."""
    reached = palms[np.asarray(errors) < tolerance]
    if len(reached) == 0:
        return 0.0
    voxels = {tuple(v) for v in np.floor(reached / VOXEL).astype(np.int64).tolist()}
    return len(voxels) * VOXEL**3


def ratio(student: float, specialist: float) -> float:
    """student / specialist (nan when the specialist's figure is 0)."""
    return float(student / specialist) if specialist else float("nan")
