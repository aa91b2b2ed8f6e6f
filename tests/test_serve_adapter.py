"""`rayworks serve adapter` in a fresh process: repositories in (encoded as the generator was
trained: by the base, its first layers, or an embedding model), adapters out, completions with
them over real HTTP, the same as the library computes; bad requests named; stopped with Ctrl-C."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import torch
from transformers import AutoConfig

from pipelines.code2lora import COMMITTED_BASES
from pipelines.code2lora_data import BUNDLED_REPOS as BUNDLED_REPOS_DIR
from serving.fuzzing import fuzz_app
from tests.helpers import free_port, start_app, stop_with_ctrl_c, wait_for
from workloads.code2lora.arms import StaticTrainee, complete, load_generator, save_generator
from workloads.code2lora.base import encode_repository, encoder_sources, load_encoder
from workloads.code2lora.hypernet import HypernetConfig
from workloads.code2lora.repos import open_repository
from workloads.lm import load_lm

SETTINGS = {"encoder_chunk_tokens": 128, "prompt_tokens": 96, "max_new_tokens": 8}
PREFIX = "import six\n\n\ndef test_b():\n    assert six.b('x') == "


def make_generator(directory: Path, settings: dict) -> Path:
    """A hypernetwork away from its no-op start (seeded), with the committed base, saved as the
    pipeline saves one; its repository vectors come from the encoder `settings` name (the base,
    its first layers, or an embedding model)."""
    (base_dir,) = (p.parent for p in COMMITTED_BASES.glob("*/config.json"))
    base, tokenizer = load_lm(base_dir)
    encoder_dim = (AutoConfig.from_pretrained(settings["encoder"]).hidden_size if settings.get("encoder")
                   else base.config.hidden_size)
    trainee = StaticTrainee(load_lm(base_dir)[0], HypernetConfig(), torch.zeros(1, 2 * encoder_dim))
    with torch.no_grad():
        trainee.hypernet.body[2].weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    return save_generator(directory, trainee, base, tokenizer, HypernetConfig(), {**SETTINGS, **settings})


def embedding_model(directory: Path) -> str:
    """A small BERT reading the base's tokens, saved as an HF embedding model."""
    from transformers import BertConfig, BertModel

    (base_dir,) = (p.parent for p in COMMITTED_BASES.glob("*/config.json"))
    _, tokenizer = load_lm(base_dir)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=48, max_position_embeddings=SETTINGS["encoder_chunk_tokens"])).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def expected_completion(generator: Path, bundle: Path, scratch: Path) -> str:
    trainee, tokenizer, settings = load_generator(generator)
    repo = open_repository(bundle, scratch)
    texts = list(encoder_sources(repo, repo.head()).values())
    if settings.get("encoder") or settings.get("encoder_layers"):  # an encoder of its own
        encoder, encoder_tokenizer = load_encoder(settings.get("encoder", ""), str(generator / "base"), settings.get("encoder_layers", 0))
        vector = encode_repository(encoder, encoder_tokenizer, texts, settings["encoder_chunk_tokens"])
    else:
        with trainee.model.disable_adapter():  # the encoder is the base alone
            vector = encode_repository(trainee.model, tokenizer, texts, settings["encoder_chunk_tokens"])
    return complete(trainee.model, tokenizer, trainee.adapter(vector), [PREFIX], settings["max_new_tokens"],
                    settings["prompt_tokens"])[0]


@pytest.mark.parametrize("encoder", ["base", "first-layers", "embedding-model"])
def test_adapters_are_made_per_repository_head_and_complete_as_the_library_does(workdir: Path, encoder: str):
    settings = {"encoder_layers": 2} if encoder == "first-layers" else {}
    if encoder == "embedding-model":
        settings = {"encoder": embedding_model(workdir / "embedder")}
    generator = make_generator(workdir / "generator", settings)
    port = free_port()
    proc, lines = start_app(workdir, "adapter", port, "--checkpoint", str(generator))
    try:
        wait_for(lines, "is up at", timeout=180)
        url = f"http://127.0.0.1:{port}"
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
