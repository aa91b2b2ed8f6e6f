"""Code2LoRA's pieces under the pipeline, without Ray: what the base and the encoder may read,
the encoder's pooling and its cut to the first layers, left-truncated prefixes, a mixed-repository batch, the metrics table and
the config's errors. The pipeline itself runs end to end in its quickstart test (two ranks)."""

import subprocess
from pathlib import Path

import pytest
import torch

from pipelines.code2lora import (COMMITTED_BASES, Config, base_key, plan_repositories, step_budget, summarise,
                                 trained_and_validation_rows)
from workloads.code2lora.arms import EvoTrainee, LoRATrainee, StaticTrainee, load_adapter
from workloads.code2lora.base import encode_history, encode_repository, encoder_diff, encoder_sources, pretraining_sources
from workloads.code2lora.hypernet import HypernetConfig, adapted_logits
from workloads.code2lora.mining import file_rank, held_out_rank
from workloads.code2lora.repos import open_repository
from workloads.config import ConfigError, load_config, to_dict
from workloads.lm import encode_text, tiny_lm
from workloads.lm.tiny import TinyLMConfig
from workloads.sft import IGNORE_INDEX, tokenize_examples

SMALL = TinyLMConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)


def git_checkout(root: Path, *commits: dict[str, str]) -> Path:
    """A git repository with one commit per mapping of path -> text (files are never removed)."""
    root.mkdir()
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": "/usr/bin:/bin"}
    subprocess.run(["git", "init", "-q"], cwd=root, check=True, env=env)
    for number, files in enumerate(commits):
        for path, text in files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text)
        for command in (["add", "."], ["commit", "-qm", f"commit {number}"]):
            subprocess.run(["git", *command], cwd=root, check=True, env=env)
    return root


def test_the_base_never_reads_held_out_test_files_and_the_encoder_reads_no_test_file(tmp_path):
    tests = [f"tests/test_{name}.py" for name in "abcde"]
    repo = open_repository(git_checkout(tmp_path / "proj", {"proj/core.py": "X = 1\n", "setup.py": "pass\n",
                                                             **{t: "def test(): assert 1 == 1\n" for t in tests}}),
                           tmp_path / "scratch")
    head = repo.head()
    held_out = held_out_rank(0, repo.name, tests, 0.4)
    held_out_files = {t for t in tests if file_rank(0, repo.name, t) <= held_out}
    assert len(held_out_files) == 2  # 0.4 of 5
    assert set(pretraining_sources(repo, head, 0, held_out)) == {"proj/core.py", "setup.py", *(set(tests) - held_out_files)}
    assert set(encoder_sources(repo, head)) == {"proj/core.py", "setup.py"}


def test_the_repository_vector_is_the_normalised_mean_and_max_over_files_of_mean_chunk_states():
    """Computed here one chunk at a time without padding; the encoder batches and pads."""
    torch.manual_seed(0)
    model, tokenizer = tiny_lm(SMALL)
    texts = ["import os\n" * 7, "def f(x):\n    return x + 1\n", "A = 2\n"]
    vector = encode_repository(model, tokenizer, texts, chunk_tokens=16, batch_size=2)
    files = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer.encode(text, add_special_tokens=False)
            chunks = [ids[i:i + 16] for i in range(0, len(ids), 16)]
            states = [model(input_ids=torch.tensor([c]), output_hidden_states=True).hidden_states[-1][0].mean(0) for c in chunks]
            files.append(torch.stack(states).mean(0))
    files = torch.stack(files)
    expected = torch.cat([files.mean(0), files.max(0).values])
    assert len(tokenizer.encode(texts[0], add_special_tokens=False)) > 16  # the first file has several chunks
    assert vector.shape == (2 * SMALL.hidden_size,)
    torch.testing.assert_close(vector, expected / expected.norm(), atol=1e-5, rtol=1e-4)


def test_a_long_prefix_keeps_its_end_and_the_target_keeps_every_token():
    _, tokenizer = tiny_lm(SMALL)
    bos = tokenizer.bos_token_id
    assert encode_text(tokenizer, "abcdefgh", max_tokens=4) == [bos, *tokenizer.encode("fgh", add_special_tokens=False)]
    assert encode_text(tokenizer, "ab", max_tokens=4) == [bos, *tokenizer.encode("ab", add_special_tokens=False)]
    prefix = "x" * 50 + "assert f() == "
    examples = tokenize_examples(tokenizer, [prefix], ["42"], 0, prompt_tokens=10)
    labels = examples.labels[0][examples.labels[0] != IGNORE_INDEX].tolist()
    assert examples.input_ids.shape[1] == 10 + 3  # 10 prompt tokens (bos included), "4", "2", eos
    assert labels == [*tokenizer.encode("42", add_special_tokens=False), tokenizer.eos_token_id]
    assert tokenizer.decode(examples.input_ids[0, 1:10]) == prefix[-9:]  # byte-level: one token per character


def test_a_batch_that_mixes_repositories_gets_each_repository_its_own_adapter():
    base, tokenizer = tiny_lm(SMALL, seed=0)
    vectors = torch.nn.functional.normalize(torch.randn(2, 6, generator=torch.Generator().manual_seed(0)), dim=-1)
    trainee = StaticTrainee(base, HypernetConfig(rank=2, width=16, max_scale=1.0), vectors)
    with torch.no_grad():  # away from the no-op start, so that the two repositories' adapters differ
        trainee.hypernet.body[2].weight.normal_(0, 0.5)
    examples = tokenize_examples(tokenizer, ["a = 1\nassert a == ", "b = [2]\nassert b == ", "c = 'x'\nassert c == "],
                                 ["1", "[2]", "'x'"], 0)
    repo_index = torch.tensor([0, 1, 0])
    mixed = trainee(examples.input_ids, examples.attention_mask, repo_index)
    for row, repo in enumerate(repo_index.tolist()):
        alone = adapted_logits(trainee.model, trainee.slots, trainee.hypernet(vectors[repo]),
                               examples.input_ids[row:row + 1], examples.attention_mask[row:row + 1])
        torch.testing.assert_close(mixed[row:row + 1], alone)
    other = adapted_logits(trainee.model, trainee.slots, trainee.hypernet(vectors[1]), examples.input_ids[:1],
                           examples.attention_mask[:1])
    assert (mixed[:1] - other).abs().max() > 1e-3
    # the adapter evaluation loads into the slots gives the same logits as the functional forward
    load_adapter(trainee.model, trainee.adapter(vectors[0]))
    with torch.no_grad():
        loaded = trainee.model(input_ids=examples.input_ids[:1], attention_mask=examples.attention_mask[:1]).logits
    torch.testing.assert_close(loaded, mixed[:1].detach())


def test_a_lora_trainee_round_trips_what_it_trained():
    base, _ = tiny_lm(SMALL, seed=0)
    first = LoRATrainee(base, HypernetConfig(rank=2))
    trainable = [n for n, p in first.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    with torch.no_grad():
        for p in first.parameters():
            if p.requires_grad:
                p.add_(0.01)
    second = LoRATrainee(tiny_lm(SMALL, seed=0)[0], HypernetConfig(rank=2))
    second.load_trained(first.trained_state())
    for (name, a), (_, b) in zip(first.trained_state().items(), second.trained_state().items()):
        torch.testing.assert_close(a, b, msg=name)


def test_the_metrics_are_means_per_arm_split_and_repository():
    rows = {"static": [{"repo_id": "a", "split": "in_repo", "em": 1.0, "nll": 1.0},
                       {"repo_id": "a", "split": "in_repo", "em": 0.0, "nll": 3.0},
                       {"repo_id": "b", "split": "in_repo", "em": 0.0, "nll": 5.0},
                       {"repo_id": "c", "split": "cross_repo", "em": 1.0, "nll": 0.5}]}
    metrics = summarise(rows)
    assert metrics["em_in_repo/static"] == pytest.approx(1 / 3) and metrics["nll_in_repo/static"] == pytest.approx(3.0)
    assert metrics["em_in_repo/static/a"] == 0.5 and metrics["nll_in_repo/static/b"] == 5.0
    assert metrics["em_cross_repo/static"] == 1.0 and "em_cross_repo/static/a" not in metrics


def test_an_evo_adapter_depends_on_the_history_up_to_its_commit_and_nothing_after():
    base, tokenizer = tiny_lm(SMALL, seed=0)
    generator = torch.Generator().manual_seed(0)
    starts, diffs = torch.randn(2, 6, generator=generator), torch.randn(2, 5, 6, generator=generator)
    trainee = EvoTrainee(base, HypernetConfig(rank=2, width=16, max_scale=1.0, bptt=2), starts, diffs, torch.tensor([5, 3]))
    with torch.no_grad():  # away from the no-op start, so that adapters differ
        trainee.hypernet.head.body[2].weight.normal_(0, 0.5)
    examples = tokenize_examples(tokenizer, ["a = 1\nassert a == ", "b = [2]\nassert b == ", "c = 'x'\nassert c == "],
                                 ["1", "[2]", "'x'"], 0)
    repo_index, commit_index = torch.tensor([0, 1, 0]), torch.tensor([2, 3, 0])
    logits = trainee(examples.input_ids, examples.attention_mask, repo_index, commit_index).detach()
    # a later diff changes nothing before it; an earlier one changes what follows
    trainee.diff_vectors[0, 2:] += 1.0
    torch.testing.assert_close(trainee(examples.input_ids, examples.attention_mask, repo_index, commit_index), logits)
    trainee.diff_vectors[0, 1] += 1.0
    changed = trainee(examples.input_ids, examples.attention_mask, repo_index, commit_index).detach()
    assert (changed[0] - logits[0]).abs().max() > 1e-4
    torch.testing.assert_close(changed[1:], logits[1:])  # repository 1, and commit 0 of repository 0
    # the last commit's adapter, loaded into the slots, is the forward's adapter at that commit
    load_adapter(trainee.model, trainee.adapter_for(1))
    with torch.no_grad():
        loaded = trainee.model(input_ids=examples.input_ids[1:2], attention_mask=examples.attention_mask[1:2]).logits
    last = trainee(examples.input_ids[1:2], examples.attention_mask[1:2], torch.tensor([1]), torch.tensor([3]))
    torch.testing.assert_close(loaded, last.detach())


def test_truncated_bptt_stops_the_gradient_bptt_diffs_back():
    base, _ = tiny_lm(SMALL, seed=0)
    diffs = torch.randn(1, 4, 6, generator=torch.Generator().manual_seed(1), requires_grad=True)
    trainee = EvoTrainee(base, HypernetConfig(rank=2, width=16, bptt=2), torch.randn(1, 6), torch.zeros(1, 4, 6), torch.tensor([4]))
    trainee.hypernet.states(trainee.start_vectors[0], diffs[0])[-1].sum().backward()
    reached = diffs.grad[0].abs().sum(dim=-1)
    assert reached[0] == 0 and reached[1] == 0 and reached[2] > 0 and reached[3] > 0
    start_grad = trainee.hypernet.start[0].weight.grad  # zero: the slice of the stacked states it reaches is unused
    assert start_grad is None or start_grad.abs().sum() == 0


def test_the_history_encoder_reads_no_test_file(tmp_path):
    diff = ("diff --git a/pkg/x.py b/pkg/x.py\n+a = 1\n"
            "diff --git a/tests/test_x.py b/tests/test_x.py\n+assert f() == 1\n"
            "diff --git a/y.py b/y.py\n-b = 2\n")
    assert encoder_diff(diff) == "diff --git a/pkg/x.py b/pkg/x.py\n+a = 1\ndiff --git a/y.py b/y.py\n-b = 2\n"
    root = git_checkout(tmp_path / "repo", {"pkg/x.py": "def f():\n    return 1\n", "tests/test_x.py": "assert 1 == 1\n"},
                        {"pkg/x.py": "def f():\n    return 2\n"}, {"tests/test_x.py": "assert 2 == 2\n"})
    repo = open_repository(root, tmp_path / "scratch")
    commits = repo.python_commits()
    model, tokenizer = tiny_lm(SMALL, seed=0)
    diffs = [repo.python_diff(commits[1], commits[0]), repo.python_diff(commits[2], commits[1])]
    start, later = encode_history(model, tokenizer, repo, commits[0], diffs, chunk_tokens=16)
    torch.testing.assert_close(start, encode_repository(model, tokenizer, ["def f():\n    return 1\n"], 16))
    torch.testing.assert_close(later[0], encode_repository(model, tokenizer, [encoder_diff(diffs[0])], 16))
    assert later.shape == (2, start.shape[0]) and later[1].abs().sum() == 0  # a commit to test files only: zeros


def test_validation_rows_are_whole_test_functions_kept_out_of_training():
    config = load_config(Config, None, ["validation_share=0.3"])
    rows = [{"repo_id": "r", "test_file": f"tests/test_{f}.py", "test_function": f"test_{g}", "commit_index": c,
             "cross_repo_split": "train", "in_repo_split": "train"} for f in range(5) for g in range(8) for c in range(2)]
    trained, validation = trained_and_validation_rows(rows, config)
    key = lambda r: (r["test_file"], r["test_function"])  # noqa: E731
    assert validation and not {key(r) for r in trained} & {key(r) for r in validation}
    assert len(trained) + len(validation) == len(rows) and 0.1 < len(validation) / len(rows) < 0.5
    assert trained_and_validation_rows(rows, load_config(Config, None, ["validation_share=0"]))[1] == []


def test_tune_is_refused_without_a_validation_metric():
    assert step_budget(load_config(Config, None, ["train.max_steps=40", "train.eval_every=10"])) == (40, 10)
    for override in ("validation_share=0", "arm=none"):
        with pytest.raises(ConfigError, match="val_nll"):
            step_budget(load_config(Config, None, [override]))


@pytest.mark.parametrize("override, field", [("arm=hyper", "arm"), ("baselines=[none, lora]", "baselines"),
                                             ("train.strategy=fsdp", "strategy"), ("prompt_tokens=250", "prompt_tokens"),
                                             ("arm=evo", "history_every"), ("validation_share=1.0", "validation_share"),
                                             ("encoder_layers=-1", "encoder_layers")])
def test_a_bad_config_names_its_field(override, field):
    with pytest.raises(ConfigError, match=field):
        load_config(Config, None, [override])


def test_an_hf_embedding_model_can_be_the_repository_encoder(tmp_path):
    from transformers import BertConfig, BertModel

    from pipelines.code2lora import encode_task, encoder_or_error

    base, tokenizer = tiny_lm(SMALL, seed=0)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=48, max_position_embeddings=64)).eval()
    bert.save_pretrained(tmp_path / "embedder")
    tokenizer.save_pretrained(tmp_path / "embedder")
    source = "def f():\n    return 1\n"
    root = git_checkout(tmp_path / "repo", {"pkg/x.py": source, "tests/test_x.py": "assert f() == 1\n"})
    repositories = [{"repo_id": "repo", "source": str(root), "head": open_repository(root, tmp_path / "s").head()}]
    vector = torch.tensor(encode_task(str(tmp_path / "base"), str(tmp_path / "embedder"), repositories, 32)["repo"])
    ids = torch.tensor([tokenizer.encode(source, add_special_tokens=False)])
    with torch.no_grad():
        mean = bert(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0].mean(dim=0)
    torch.testing.assert_close(vector, torch.nn.functional.normalize(torch.cat([mean, mean]), dim=0))  # one file, one chunk
    with pytest.raises(ValueError, match="encoder_chunk_tokens"):  # longer chunks than the embedder's positions
        encode_task(str(tmp_path / "base"), str(tmp_path / "embedder"), repositories, 128)
    with pytest.raises(ConfigError, match="encoder"):
        encoder_or_error(str(tmp_path / "missing-embedder"), str(tmp_path / "base"))


def test_a_cut_encoder_encodes_with_the_states_after_its_first_layers(tmp_path):
    """`encoder_layers=k`: the base's normalised hidden states after layer k (the full model's
    k-th hidden state under its final norm), pooled as before; out-of-range k named."""
    from pipelines.code2lora import encode_task, encoder_or_error

    base, tokenizer = tiny_lm(SMALL, seed=0)
    with torch.no_grad():  # a final norm that is not the identity, so that the test sees where it applies
        base.model.norm.weight.uniform_(0.5, 1.5)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    source = "def f():\n    return 1\n"
    root = git_checkout(tmp_path / "repo", {"pkg/x.py": source, "tests/test_x.py": "assert f() == 1\n"})
    repositories = [{"repo_id": "repo", "source": str(root), "head": open_repository(root, tmp_path / "s").head()}]
    vector = torch.tensor(encode_task(str(tmp_path / "base"), "", repositories, 32, layers=1)["repo"])
    ids = torch.tensor([tokenizer.encode(source, add_special_tokens=False)])
    with torch.no_grad():
        states = base.model(input_ids=ids, output_hidden_states=True).hidden_states[1]  # after the first layer
        mean = base.model.norm(states)[0].mean(dim=0)
    torch.testing.assert_close(vector, torch.nn.functional.normalize(torch.cat([mean, mean]), dim=0))
    every = torch.tensor(encode_task(str(tmp_path / "base"), "", repositories, 32, layers=0)["repo"])
    assert not torch.allclose(vector, every)  # the whole base encodes differently
    with pytest.raises(ConfigError, match=r"encoder_layers \(3\) must be between 1 and the encoder's 2 layers"):
        encoder_or_error("", str(tmp_path / "base"), 3)


def test_the_tiny_base_pretrains_and_a_per_repository_lora_learns_its_rows(tmp_path):
    import math

    import pyarrow as pa
    import pyarrow.parquet as pq

    from actors.code2lora import ROW_SCHEMA
    from pipelines.code2lora import per_repo_task, row_nll, training_data
    from workloads.code2lora.arms import LoRATrainee
    from workloads.code2lora.base import PretrainConfig, pretrain_base, windows
    from workloads.sft import masked_token_cross_entropy

    source = [f"def scale_{i}(values):\n    return [v * {i} for v in values]\n" for i in range(60)]
    model, tokenizer = pretrain_base(source[:50], SMALL, PretrainConfig(steps=60, batch_size=8, window=64, bpe_merges=64), seed=0)
    held_out = windows(tokenizer, source[50:], 64)
    with torch.no_grad():
        loss = float(masked_token_cross_entropy(model(input_ids=held_out.input_ids, attention_mask=held_out.attention_mask).logits,
                                                held_out.labels))
    assert loss < math.log(len(tokenizer)) - 1.5, loss  # a uniform guess costs log(vocabulary)
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")

    def row(i: int, split: str) -> dict:
        return {"repo_id": "r", "commit_sha": "c", "commit_index": 0, "in_repo_split": split, "cross_repo_split": "train",
                "test_file": f"tests/test_{i % 4}.py", "test_function": f"test_{i}",
                "prefix": f"def test_{i}(self):\n    self.assertEqual(scale_{i}([1]), ", "target": f"[{i}]"}
    (tmp_path / "rows" / "rows").mkdir(parents=True)
    rows = [row(i, "train") for i in range(40)] + [row(i, "test") for i in range(40, 50)]
    pq.write_table(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), tmp_path / "rows" / "rows" / "part.parquet")
    config = load_config(Config, None, ["train.max_steps=30", "train.batch_size=8", "train.lr=3e-3", "hypernet.rank=4",
                                        "train.warmup_steps=3"])
    common = {"config": to_dict(config),
              "base_dir": str(tmp_path / "base"), "rows_dir": str(tmp_path / "rows"), "names": ["r"], "vectors": [[0.0]]}
    adapter = per_repo_task(common, "r")
    scored = LoRATrainee(model, config.hypernet)
    data, where = training_data(tokenizer, rows[40:], ["r"], config.prompt_tokens)
    before = sum(row_nll(scored, data, where)) / 10
    scored.load_trained(adapter)
    after = sum(row_nll(scored, data, where)) / 10
    assert after < before - 0.5, (before, after)  # held-out test rows of the same repository


def test_the_committed_base_is_the_one_the_default_split_asks_for():
    """A changed model, pre-training or split default changes the base's key: the committed base
    then no longer matches and every default run pre-trains its own (minutes) until it is rebuilt
    (data/code2lora-base/README.md)."""
    config = Config()
    _, repositories = plan_repositories(config)
    key = base_key(config, [r for r in repositories if r["cross_repo_split"] == "train"])
    assert (COMMITTED_BASES / key / "config.json").is_file(), (key, sorted(p.name for p in COMMITTED_BASES.iterdir()))
