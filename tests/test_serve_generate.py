"""`rayworks serve generate` in a fresh process, answered over real HTTP, stopped with Ctrl-C."""

from __future__ import annotations

import os
from pathlib import Path

import requests

from serving.fuzzing import fuzz_app
from tests.helpers import free_port, start_app, stop_with_ctrl_c, wait_for

PORT = free_port()


def _register_tiny_model(workdir: Path) -> str:
    """Put a real model version into the workdir's MLflow registry (as `sft` would): Qwen2-chat
    style, with no BOS and a chat template, as real instruct checkpoints come."""
    from workloads import tracking
    from workloads.lm import TinyLMConfig, build_tiny_lm

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    try:
        (workdir / "mlruns").mkdir()
        run = tracking.start_run("rayworks-sft", "registered-for-serve")
        run.log_artifact(build_tiny_lm(TinyLMConfig(tokenizer="qwen2-chat"), workdir / "model", seed=0), "model")
        tracking.register_model(run, "model", "rayworks-sft")
        run.end()
        return run.run_id
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]


def test_generate_serves_the_newest_registered_model_and_validates_requests(workdir: Path):
    run_id = _register_tiny_model(workdir)
    proc, lines = start_app(workdir, "generate", PORT)
    try:
        wait_for(lines, "is up at", timeout=180)
        url = f"http://127.0.0.1:{PORT}"
        health = requests.get(f"{url}/healthz", timeout=30).json()
        assert run_id in health["model"] and health["warning"] is None

        ok = requests.post(f"{url}/generate", json={"prompt": "Q: 1+2\n", "max_new_tokens": 5}, timeout=60)
        assert ok.status_code == 200
        body = ok.json()
        assert isinstance(body["completion"], str) and run_id in body["model"]

        # /generate prompts through the chat template, with no BOS: the same greedy tokens as the
        # raw route given the template's ids, encoded here by the tokenizer itself
        from workloads.lm import load_tokenizer

        tokenizer = load_tokenizer(workdir / "model")
        templated = tokenizer.apply_chat_template([{"role": "user", "content": "Q: 1+2\n"}], tokenize=False,
                                                  add_generation_prompt=True)
        ids = tokenizer.encode(templated, add_special_tokens=False)
        assert templated.startswith("<|im_start|>user") and tokenizer.bos_token_id is None
        raw = requests.post(f"{url}/v1/completions", json={"prompt": ids, "max_tokens": 5, "temperature": 0,
                                                           "prompt_logprobs": 1}, timeout=60).json()
        assert raw["choices"][0]["text"] == body["completion"]
        text = requests.post(f"{url}/v1/completions", json={"prompt": "Q: 1+2", "max_tokens": 1, "prompt_logprobs": 0},
                             timeout=60).json()
        assert text["usage"]["prompt_tokens"] == len("Q: 1+2")  # raw text, no BOS prepended

        for payload, field in [
            ({"prompt": "Q: 1+2\n", "max_new_tokens": "5"}, "max_new_tokens"),
            ({"prompt": "Q", "max_new_tokens": 100000}, "max_new_tokens"),
            ({"prompt": "", "max_new_tokens": 5}, "prompt"),
            ({"prompt": "x" * 5000}, "prompt"),
            ({"max_new_tokens": 5}, "prompt"),
            ({"prompt": "Q", "temperature": 2}, "temperature"),
        ]:
            bad = requests.post(f"{url}/generate", json=payload, timeout=30)
            assert 400 <= bad.status_code < 500, payload
            assert bad.json()["error"].startswith(field) or f"{field}:" in bad.json()["error"], bad.json()
        not_json = requests.post(f"{url}/generate", data="{not json", headers={"content-type": "application/json"}, timeout=30)
        assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]
        assert fuzz_app(url, "generate") == []  # every route: 4xx that names the field, never a 5xx
    finally:
        code = stop_with_ctrl_c(proc)
    assert code == 0
    wait_for(lines, "shutting down Serve", timeout=5)
    try:
        requests.get(f"http://127.0.0.1:{PORT}/healthz", timeout=2)
        raise AssertionError("server still answering after Ctrl-C")
    except requests.ConnectionError:
        pass


def test_no_checkpoint_and_empty_registry_falls_back_to_untrained_with_warning(workdir: Path, monkeypatch):
    from serving.generate import resolve_checkpoint

    monkeypatch.chdir(workdir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path, warning = resolve_checkpoint(None, f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    assert "UNTRAINED" in warning and (Path(path) / "config.json").is_file()
    given, none = resolve_checkpoint("/some/model", None)
    assert (given, none) == ("/some/model", None)
