"""Helpers for fresh-process CLI runs in a scratch directory with their own MLflow store."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def scratch_env(workdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def rayworks(workdir: Path, *args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the `rayworks` console script in a fresh process, in `workdir`."""
    return subprocess.run(
        ["rayworks", *args], cwd=workdir, env=env or scratch_env(workdir),
        capture_output=True, text=True, timeout=timeout,
    )


def python_module(workdir: Path, module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=workdir, env=scratch_env(workdir),
        capture_output=True, text=True, timeout=timeout,
    )


def result_lines(stdout: str) -> list[dict]:
    import json

    return [json.loads(line.removeprefix("RESULT ")) for line in stdout.splitlines() if line.startswith("RESULT ")]


def mlflow_client(workdir: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def free_port() -> int:
    """A TCP port no process holds now: tests run in parallel, so fixed ports collide."""
    from serving.http import free_port as free_port_on

    return free_port_on("127.0.0.1")


def start_app(workdir: Path, app: str, port: int, *args: str) -> tuple[subprocess.Popen, "queue.Queue[str]"]:
    """`rayworks serve APP` in a fresh process and session; its output lines arrive on the queue.

    The app starts with SIGINT ignored, as a background job of a non-interactive shell (a CI
    script's) starts it: `stop_with_ctrl_c` then checks that Ctrl-C stops it all the same."""
    proc = subprocess.Popen(["rayworks", "serve", app, "--port", str(port), *args], cwd=workdir,
                            env=scratch_env(workdir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    return proc, lines


def wait_for(lines: "queue.Queue[str]", text: str, timeout: float) -> list[str]:
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            continue
        if text in seen[-1]:
            return seen
    raise AssertionError(f"{text!r} not printed within {timeout}s:\n" + "".join(seen[-40:]))


def kill_session(leader: int) -> None:
    """SIGKILL every process of the session `leader` started: the CLI and the local Ray it owns
    (Ray's workers sit in their own process groups, so killing the group is not enough)."""
    import psutil

    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == leader:
                os.kill(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue


def stop_with_ctrl_c(proc: subprocess.Popen, timeout: float = 90) -> int:
    """Ctrl-C the app and return its exit code; if it does not exit in time, kill its whole session
    so a hung app cannot leave a Ray cluster behind for the next test, and fail."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(proc.pid)
        proc.wait(timeout=30)
        raise AssertionError(f"the app did not exit within {timeout}s of Ctrl-C; its session was killed") from None


def state_fingerprint(state: dict) -> str:
    """sha256 over a state dict, names sorted, values as float32 bytes: written here, apart from
    the pipelines' own fingerprint (`workloads.distributed`), so that comparing the two checks it."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def saved_model_fingerprint(client, run_id: str, workdir: Path) -> str:
    from transformers import AutoModelForCausalLM

    directory = client.download_artifacts(run_id, "model", str(workdir / f"download-{run_id[:8]}"))
    return state_fingerprint(AutoModelForCausalLM.from_pretrained(directory).state_dict())


def assert_both_ranks_hold(client, run_id: str, expected: str) -> None:
    """The run's two training ranks each ended with the parameters whose fingerprint is `expected`."""
    run = client.get_run(run_id)
    fingerprints = json.loads(run.data.tags["rayworks.rank_fingerprints"])
    assert fingerprints == [expected, expected], fingerprints
    assert run.data.metrics["ranks_in_sync"] == 1.0 and run.info.status == "FINISHED"


SPAWN_TIMEOUT_S = 180


def spawn_ranks(target, tmp_path: Path, *args, world_size: int = 2) -> list:
    """Run `target(rank, *args)` in `world_size` fresh processes of one gloo group (no Ray);
    their return values in rank order. A rank that raises fails the test with its traceback; ranks
    that wait on each other forever (a collective not met) fail it after SPAWN_TIMEOUT_S."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    init = f"file://{tmp_path / f'rendezvous-{time.time_ns()}'}"
    processes = [context.Process(target=_rank_entry, args=(rank, world_size, init, results, target, args))
                 for rank in range(world_size)]
    for process in processes:
        process.start()
    out = {}
    try:
        for _ in processes:
            rank, value = results.get(timeout=SPAWN_TIMEOUT_S)
            out[rank] = value
    except queue.Empty:
        raise AssertionError(f"the ranks did not finish within {SPAWN_TIMEOUT_S}s (a collective was not met)") from None
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    for rank, value in out.items():
        if isinstance(value, str) and value.startswith("Traceback"):
            raise AssertionError(f"rank {rank} failed:\n{value}")
    return [out[rank] for rank in range(world_size)]


def _rank_entry(rank: int, world_size: int, init: str, results, target, args) -> None:
    import traceback

    import torch

    os.environ.update(OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    try:
        torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
        results.put((rank, target(rank, *args)))
    except BaseException:
        results.put((rank, traceback.format_exc()))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def assert_code2lora_arm_learned(workdir: Path, summary: dict, arm: str, margin: float):
    """A `code2lora` run's `arm` lowered the held-out target NLL of the frozen base (the `none`
    arm) by `margin` on both splits, and its Ray Train ranks ended identical; its MLflow run."""
    extra = summary["extra"]
    assert summary["value"] == extra[f"nll_in_repo/{arm}"] <= extra["nll_in_repo/none"] - margin, summary
    assert extra[f"nll_cross_repo/{arm}"] <= extra["nll_cross_repo/none"] - margin, summary
    run = mlflow_client(workdir).get_run(summary["run_id"])
    assert run.data.metrics[f"ranks_in_sync/{arm}"] == 1.0
    assert len(set(json.loads(run.data.tags[f"rayworks.rank_fingerprints.{arm}"]))) == 1
    return run


def endless_model(out: Path) -> str:
    """A tiny model that never writes an end-of-step marker or eos (its final norm zeroed: every
    logit 0, greedy picks token 0, a special token that decodes to nothing): each step it writes
    costs exactly the writer's `max_step_tokens`, and no agent ends early."""
    from workloads.lm import TinyLMConfig, tiny_lm

    model, tokenizer = tiny_lm(TinyLMConfig(num_layers=2, max_positions=512))
    model.model.norm.weight.data.zero_()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@functools.lru_cache(maxsize=None)
def egl_renders() -> bool:
    """Whether MuJoCo renders headless here (MUJOCO_GL=egl, as the pipelines' render tasks run):
    where it does, a skipped render is a failure, not a missing OpenGL."""
    probe = """import mujoco
model = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size="0.1"/></worldbody></mujoco>')
renderer = mujoco.Renderer(model, 16, 16)
renderer.update_scene(mujoco.MjData(model))
assert renderer.render().shape == (16, 16, 3)
"""
    done = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "MUJOCO_GL": "egl"}, capture_output=True, timeout=120)
    return done.returncode == 0

