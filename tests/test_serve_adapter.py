"""`rayworks serve adapter` in a fresh process: repositories in, adapters out, completions with
them over real HTTP, the same as the library computes; bad requests named; stopped with Ctrl-C."""

from __future__ import annotations

from pathlib import Path

import requests
import torch

from pipelines.code2lora import COMMITTED_BASES
from pipelines.code2lora_data import BUNDLED_REPOS as BUNDLED_REPOS_DIR
from serving.fuzzing import fuzz_app
from tests.helpers import free_port, start_app, stop_with_ctrl_c, wait_for
from workloads.code2lora.arms import StaticTrainee, complete, load_generator, save_generator
from workloads.code2lora.base import encode_repository, encoder_sources, load_encoder
from workloads.code2lora.hypernet import HypernetConfig
from workloads.code2lora.repos import open_repository
from workloads.lm import load_lm

PORT = free_port()
SETTINGS = {"encoder_chunk_tokens": 128, "encoder_layers": 2, "prompt_tokens": 96, "max_new_tokens": 8}
PREFIX = "import six\n\n\ndef test_b():\n    assert six.b('x') == "


def make_generator(directory: Path) -> Path:
    """A hypernetwork away from its no-op start (seeded), with the committed base, saved as the
    pipeline saves one."""
    (base_dir,) = (p.parent for p in COMMITTED_BASES.glob("*/config.json"))
    base, tokenizer = load_lm(base_dir)
    trainee = StaticTrainee(load_lm(base_dir)[0], HypernetConfig(), torch.zeros(1, 2 * base.config.hidden_size))
    with torch.no_grad():
        trainee.hypernet.body[2].weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    return save_generator(directory, trainee, base, tokenizer, HypernetConfig(), SETTINGS)


def expected_completion(generator: Path, bundle: Path, scratch: Path) -> str:
    trainee, tokenizer, settings = load_generator(generator)
    repo = open_repository(bundle, scratch)
    encoder, _ = load_encoder("", str(generator / "base"), settings["encoder_layers"])  # the base's first layers
    vector = encode_repository(encoder, tokenizer, list(encoder_sources(repo, repo.head()).values()),
                               settings["encoder_chunk_tokens"])
    return complete(trainee.model, tokenizer, trainee.adapter(vector), [PREFIX], settings["max_new_tokens"],
                    settings["prompt_tokens"])[0]


def test_adapters_are_made_per_repository_head_and_complete_as_the_library_does(workdir: Path):
    generator = make_generator(workdir / "generator")
    proc, lines = start_app(workdir, "adapter", PORT, "--checkpoint", str(generator))
    try:
        wait_for(lines, "is up at", timeout=180)
        url = f"http://127.0.0.1:{PORT}"
        made = {}
        for name in ("six", "schema"):
            bundle = str(BUNDLED_REPOS_DIR / f"{name}.bundle")
            first = requests.post(f"{url}/adapt", json={"repo": bundle}, timeout=120).json()
            again = requests.post(f"{url}/adapt", json={"repo": bundle}, timeout=120).json()
            assert first["adapter"] == again["adapter"] == f"{name}@{first['head']}" and len(first["head"]) == 40
            assert (first["cached"], again["cached"]) == (False, True)
            made[name] = adapter = first["adapter"]
            # completing loads this adapter into the slots: the next repository is still encoded by the base alone
            answer = requests.post(f"{url}/complete", json={"adapter": adapter, "prefix": PREFIX}, timeout=120)
            assert answer.status_code == 200, answer.text
            assert answer.json()["completion"] == expected_completion(generator, BUNDLED_REPOS_DIR / f"{name}.bundle",
                                                                       workdir / "scratch")

        not_git = workdir / "plain"
        not_git.mkdir()
        for body, status, named in (({"repo": str(workdir / "missing.bundle")}, 422, "repo"),
                                    ({"repo": str(not_git)}, 422, "repo"),
                                    ({"repo": "a\u0000b"}, 422, "repo")):
            answer = requests.post(f"{url}/adapt", json=body, timeout=60)
            assert answer.status_code == status and answer.json()["error"].startswith(named), answer.text
        unknown = requests.post(f"{url}/complete", json={"adapter": "nope@1", "prefix": "x"}, timeout=60)
        assert unknown.status_code == 404 and unknown.json()["error"].startswith("adapter: unknown adapter 'nope@1'")
        examples = {"/adapt": {"repo": str(BUNDLED_REPOS_DIR / "six.bundle")},
                    "/complete": {"adapter": made["six"], "prefix": PREFIX, "max_new_tokens": 4}}
        assert fuzz_app(url, "adapter", examples=examples) == []  # 4xx naming the field, never a 5xx
    finally:
        assert stop_with_ctrl_c(proc) == 0
