"""The cluster configs name things that exist: pipelines, Serve apps, the image built in infra/."""

import re
import shlex
from pathlib import Path

import yaml

from cluster.submit import check_storage_path
from pipelines import PIPELINES, get_pipeline
from serving import APPS
from workloads.config import load_config

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "ghcr.io/rayworks/rayworks:0.1.0"


def _images(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image" and isinstance(v, str)] + [i for v in node.values() for i in _images(v)]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


def _check_entrypoint(entrypoint: str):
    words = shlex.split(entrypoint)
    assert words[:2] == ["python", "-m"] and words[2].startswith("pipelines.")
    name = words[2].removeprefix("pipelines.")
    assert name in PIPELINES
    overrides = words[words.index("--set") + 1:] if "--set" in words else []
    return load_config(get_pipeline(name).Config, None, overrides)  # every override is a real, valid field


def _check_serve_config(config: dict) -> None:
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(config)  # what `serve run` / `serve deploy` accept
    for app in config["applications"]:
        assert app["name"] in APPS and app["import_path"] == APPS[app["name"]]


def test_rayjob_runs_a_real_pipeline_with_valid_overrides():
    job = yaml.safe_load((ROOT / "cluster/kuberay-rayjob.yaml").read_text())
    assert job["kind"] == "RayJob"
    config = _check_entrypoint(job["spec"]["entrypoint"])
    check_storage_path(config.storage_path)  # checkpoints on the volume every pod mounts, not in the job's dir
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert any(config.storage_path.startswith(mount["mountPath"]) for mount in head["volumeMounts"])
    assert set(_images(job)) == {IMAGE}
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == "2.60.0"


def test_rayservice_and_serve_run_config_name_real_apps():
    service = yaml.safe_load((ROOT / "cluster/kuberay-rayservice.yaml").read_text())
    assert service["kind"] == "RayService"
    _check_serve_config(yaml.safe_load(service["spec"]["serveConfigV2"]))
    assert set(_images(service)) == {IMAGE}
    for app in APPS:
        _check_serve_config(yaml.safe_load((ROOT / f"serving/{app}.yaml").read_text()))


def test_launcher_has_a_cpu_head_and_gpu_workers_running_the_image():
    launcher = yaml.safe_load((ROOT / "cluster/launcher-aws.yaml").read_text())
    nodes = launcher["available_node_types"]
    assert nodes[launcher["head_node_type"]]["resources"]["GPU"] == 0
    assert any(n["resources"].get("GPU", 0) >= 1 and n["max_workers"] > 0 for n in nodes.values())
    assert launcher["docker"]["image"] == IMAGE
    assert launcher["provider"]["type"] == "aws"


def test_dockerfile_installs_the_project_and_copies_every_package():
    dockerfile = (ROOT / "infra/Dockerfile").read_text()
    assert "FROM ${BASE_IMAGE}" in dockerfile and "rayproject/ray:2.60.0" in dockerfile
    copied = set(re.findall(r"^COPY (\w+) \1$", dockerfile, flags=re.M))
    assert {"cluster", "actors", "workloads", "envs", "pipelines", "serving"} <= copied
    assert "pip install --no-cache-dir -e ." in dockerfile


def test_the_full_scale_g1_config_is_a_valid_ppo_config_of_about_200m_steps():
    config = load_config(get_pipeline("ppo").Config, ROOT / "cluster/ppo-g1-full.yaml")
    check_storage_path(config.storage_path)
    steps = config.iterations * config.steps_per_iteration * config.num_rollout_workers * config.envs_per_worker
    assert config.env == "rayworks/G1Velocity-v0" and config.train.use_gpu and config.env_params["randomize"]
    assert 1.9e8 < steps < 2.2e8


def test_the_full_scale_handoff_configs_are_valid():
    for name, env in (("recovery", "rayworks/G1Recovery-v0"), ("motion", "rayworks/G1Motion-v0")):
        config = load_config(get_pipeline("ppo").Config, ROOT / f"cluster/ppo-g1-{name}-full.yaml")
        assert config.env == env and config.train.use_gpu
    config = load_config(get_pipeline("handoff").Config, ROOT / "cluster/handoff-full.yaml")
    check_storage_path(config.storage_path)
    assert set(config.teachers) == set(config.modes) and config.train.num_workers == 4
