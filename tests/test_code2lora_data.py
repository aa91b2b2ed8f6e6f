"""Code2LoRA data: git repositories read through git, assertions mined with ast, the seeded
splits, and the `code2lora_data` pipeline (Ray Data actors, Parquet, MLflow, the cache) on
real bundled repositories beside broken ones."""

import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pyarrow.dataset as pds
import pytest

from actors.code2lora import ROW_SCHEMA
from pipelines.code2lora_data import BUNDLED_REPOS
from workloads.code2lora.mining import (
    ROW_FIELDS,
    MiningConfig,
    held_out_rank,
    in_repo_split,
    is_test_file,
    mine_files,
    mine_source,
    mined_commits,
    normalise,
)
from workloads.code2lora.repos import RepositoryError, open_repository
from tests.helpers import mlflow_client, rayworks, result_lines

XMLTODICT_HEAD = "8d7f1fdb2251b5dc3b98df447850cb8229defc32"  # data/code-repos/MANIFEST.tsv

UNITTEST_FILE = '''import unittest
from pkg import add  # the code under test

HELPER = 3


class AddTest(unittest.TestCase):
    """Docstring."""

    def setUp(self):
        self.base = 1

    def helper(self):
        return 2

    def test_add(self):
        total = add(self.base, 1)
        self.assertTrue(total)
        self.assertEqual(total, 2)
        with self.subTest():
            self.assertIn(total, [2, 3])

    def test_nested_helper_is_not_a_test(self):
        def check(x):
            assert x == 5
        self.assertRaises(ValueError, add)
'''

PYTEST_FILE = '''try:
    import simplejson as json
except ImportError:
    import json


def test_dump():
    assert json.dumps(1) == "1"
    assert len(json.dumps([1, 2])) > 2
    assert json.loads("[1, 2]") == [
        1, 2]
    assert json.loads("[1]")
'''


def test_unittest_assertions_become_rows_with_imports_class_header_and_setup():
    skips = Counter()
    rows = mine_source(UNITTEST_FILE, max_target_chars=64, skips=skips)
    context = ("import unittest\nfrom pkg import add\n\n\n"
               "class AddTest(unittest.TestCase):\n"  # the header line; the docstring is not code
               "    def setUp(self):\n        self.base = 1\n\n")
    body = "    def test_add(self):\n        total = add(self.base, 1)\n        self.assertTrue(total)\n"
    assert rows == [
        {"test_function": "AddTest.test_add", "prefix": context + body + "        self.assertEqual(total, ", "target": "2"},
        {"test_function": "AddTest.test_add", "target": "[2, 3]",
         "prefix": context + body + "        self.assertEqual(total, 2)\n        with self.subTest():\n"
                                    "            self.assertIn(total, "},
    ]  # assertTrue and assertRaises have no expected value; the nested helper's assert is not the test's
    assert not skips


def test_pytest_comparisons_become_rows_and_long_targets_are_counted():
    skips = Counter()
    rows = mine_source(PYTEST_FILE, max_target_chars=64, skips=skips)
    imports = 'try:\n    import simplejson as json\nexcept ImportError:\n    import json\n\n\n'
    assert [(r["prefix"], r["target"]) for r in rows] == [
        (imports + 'def test_dump():\n    assert json.dumps(1) == ', '"1"'),
        (imports + 'def test_dump():\n    assert json.dumps(1) == "1"\n    assert len(json.dumps([1, 2])) > ', "2"),
    ]
    assert skips == {"target too long or multi-line": 1}
    assert mine_source("def test_x(:\n", max_target_chars=64, skips=skips) == []
    assert skips["syntax error in test file"] == 1


def test_binary_undecodable_and_oversized_test_files_are_counted_and_skipped():
    skips = Counter()
    files = {"test_bin.py": b"\0\1\2", "test_latin.py": "x = 'caf\u00e9'".encode("latin-1"),
             "test_ok.py": b"def test_a():\n    assert 1 == 1\n", "test_huge.py": b""}
    sizes = {"test_bin.py": 3, "test_latin.py": 11, "test_ok.py": 33, "test_huge.py": 10**9}
    rows = mine_files(files, sizes, repo_id="r", commit_sha="c", commit_index=0, cross_repo_split="train",
                      held_out=-1.0, seed=0, config=MiningConfig(), skips=skips)
    assert [(r["test_file"], r["target"], r["in_repo_split"]) for r in rows] == [("test_ok.py", "1", "train")]
    assert set(rows[0]) == set(ROW_FIELDS) == set(ROW_SCHEMA.names)
    assert skips == {"binary or undecodable test file": 2, "test file too large": 1}


def test_normalisation_of_the_exact_match_metric():
    assert normalise("{'a': 1}  # why\nnext line") == "{'a': 1}"
    assert normalise("'#text',  ") == "'#text'"  # a '#' inside a string is not a comment
    assert normalise("  foo( 1,\t 2 ) :") == "foo( 1, 2 )"
    assert normalise("[1, 2") == "[1, 2"  # an unclosed bracket is left as written


def test_test_files_and_in_repo_splits_are_seeded_by_file():
    assert [is_test_file(p) for p in ("tests/test_a.py", "a_test.py", "pkg/tests.py", "test.py", "testing.py",
                                      "tests/conftest.py", "test_a.txt")] == [True] * 4 + [False] * 3
    assert held_out_rank(0, "r", ["test_only.py"], 0.2) == -1.0  # one test file: nothing held out
    files = [f"tests/test_{i}.py" for i in range(10)]
    for seed in (0, 1):
        held_out = held_out_rank(seed, "r", files, 0.2)
        sides = [in_repo_split(seed, "r", f, held_out) for f in files]
        assert sides.count("test") == 2  # round(0.2 * 10)
    two = ["test_a.py", "test_b.py"]
    assert sorted(in_repo_split(0, "r", f, held_out_rank(0, "r", two, 0.2)) for f in two) == ["test", "train"]
    splits_by_seed = {tuple(in_repo_split(s, "r", f, held_out_rank(s, "r", files, 0.2)) for f in files) for s in range(5)}
    assert len(splits_by_seed) > 1  # the seed chooses the held-out files


def test_mined_commits_take_every_kth_python_commit_and_end_at_head():
    history = ["a", "b", "c", "d", "e"]
    assert mined_commits(history, "e", 0) == ["e"]
    assert mined_commits(history, "e", 2) == ["a", "c", "e"]
    assert mined_commits(history, "e", 3) == ["a", "d", "e"]
    assert mined_commits(history, "f", 2) == ["a", "c", "e", "f"]  # HEAD changed no Python file: still last


def test_a_bundled_repository_is_read_through_git(tmp_path: Path):
    repo = open_repository(BUNDLED_REPOS / "xmltodict.bundle", tmp_path)
    assert repo.name == "xmltodict" and repo.head() == XMLTODICT_HEAD
    history = repo.python_commits()
    assert len(history) > 100 and XMLTODICT_HEAD not in history[:-1]
    files = repo.files(XMLTODICT_HEAD)
    assert {"tests/test_xmltodict.py", "tests/test_dicttoxml.py", "LICENSE"} <= set(files)
    text = repo.read(XMLTODICT_HEAD, ["tests/test_xmltodict.py", "no/such/file.py"])
    assert list(text) == ["tests/test_xmltodict.py"] and len(text["tests/test_xmltodict.py"]) == files["tests/test_xmltodict.py"]
    rows = mine_source(text["tests/test_xmltodict.py"].decode(), max_target_chars=64)
    simple = [r for r in rows if r["test_function"] == "test_simple"]
    assert [r["target"] for r in simple] == ["{'a': 'data'}"]
    assert simple[0]["prefix"].startswith("from xmltodict import parse, ParsingInterrupted\nimport collections\n")
    assert simple[0]["prefix"].endswith("def test_simple():\n    assert parse('<a>data</a>') == ")
    first_diff = repo.python_diff(history[0])
    assert first_diff.startswith("diff --git") and "+++ b/" in first_diff
    assert repo.python_diff(history[1], history[0]) != first_diff


def test_bad_repositories_are_named(tmp_path: Path):
    corrupt = tmp_path / "corrupt.bundle"
    corrupt.write_bytes(b"# v2 git bundle\nnot really\n")
    with pytest.raises(RepositoryError, match="corrupt.bundle: not a readable git bundle"):
        open_repository(corrupt, tmp_path / "scratch")
    (tmp_path / "plain").mkdir()
    with pytest.raises(RepositoryError, match="plain: not a git repository"):
        open_repository(tmp_path / "plain", tmp_path / "scratch")
    with pytest.raises(RepositoryError, match="missing: no such bundle or directory"):
        open_repository(tmp_path / "missing", tmp_path / "scratch")


def _git_checkout(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text)
    env = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", str(directory)], check=True)
    subprocess.run(["git", "-C", str(directory), "add", "."], check=True)
    subprocess.run(["git", "-C", str(directory), *env, "commit", "-qm", "first"], check=True)
    return directory


def test_the_pipeline_mines_real_repositories_counts_what_it_skips_and_caches(workdir: Path):
    repos = workdir / "repos"
    repos.mkdir()
    for name in ("xmltodict", "six"):
        shutil.copy(BUNDLED_REPOS / f"{name}.bundle", repos)
    (repos / "corrupt.bundle").write_bytes(b"not a bundle")
    _git_checkout(repos / "no-tests", {"lib.py": "def f():\n    return 1\n"})
    _git_checkout(repos / "local", {"test_local.py": "from lib import f\n\ndef test_f():\n    assert f() == 1\n",
                                    "lib.py": "def f():\n    return 1\n"})
    args = ("run", "code2lora_data", "--set", f"repos={repos}", "history_every=40", "cross_repo_test=1", "num_actors=2")
    proc = rayworks(workdir, *args, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (summary,) = result_lines(proc.stdout)
    output = Path(summary["artifacts"])
    rows = pds.dataset(output / "rows").to_table().to_pylist()
    assert len(rows) == summary["value"] > 200
    by_repo = Counter(r["repo_id"] for r in rows)
    assert set(by_repo) == {"xmltodict", "six", "local"}
    held_out = {r["repo_id"] for r in rows if r["cross_repo_split"] == "test"}
    assert len(held_out) == 1  # one whole repository, every one of its rows
    assert all(r["cross_repo_split"] == "test" for r in rows if r["repo_id"] in held_out)
    xml_rows = [r for r in rows if r["repo_id"] == "xmltodict"]
    assert {r["in_repo_split"] for r in xml_rows} == {"train", "test"}  # two test files: one held out
    for test_file in {r["test_file"] for r in xml_rows}:  # a file is on one side at every commit
        assert len({r["in_repo_split"] for r in xml_rows if r["test_file"] == test_file}) == 1
    assert len({r["commit_index"] for r in xml_rows}) > 2  # the evolving track: rows at several commits
    assert {"prefix": "from lib import f\n\n\ndef test_f():\n    assert f() == ", "target": "1"}.items() <= \
        [r for r in rows if r["repo_id"] == "local"][0].items()
    commits = pds.dataset(output / "commits").to_table().to_pylist()
    mined = {(r["repo_id"], r["commit_index"]) for r in commits}
    assert {("no-tests", 0), ("local", 0), ("xmltodict", 0)} <= mined  # a diff for every mined commit, tests or not
    assert all(c["diff"].startswith("diff --git") for c in commits if c["repo_id"] in ("local", "no-tests"))

    metrics = mlflow_client(workdir).get_run(summary["run_id"]).data.metrics
    assert metrics["skipped/unreadable repository"] == 1
    assert metrics["skipped/repository without a minable assertion"] == 1
    assert metrics["skipped/commit without test files"] >= 1
    assert metrics["rows"] == len(rows) and metrics["rows_cross_repo_test"] == sum(by_repo[r] for r in held_out)

    again = rayworks(workdir, *args, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    (cached,) = result_lines(again.stdout)
    assert cached["extra"]["cached"] and cached["artifacts"] == summary["artifacts"] and cached["value"] == summary["value"]


def test_a_directory_without_repositories_is_a_config_error(workdir: Path):
    (workdir / "empty").mkdir()
    proc = rayworks(workdir, "run", "code2lora_data", "--set", f"repos={workdir / 'empty'}", timeout=120)
    assert proc.returncode != 0 and "repos:" in proc.stderr and "no *.bundle file and no git checkout" in proc.stderr
    assert "Traceback" not in proc.stderr
