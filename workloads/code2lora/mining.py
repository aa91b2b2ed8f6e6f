"""Assertion mining: the Code2LoRA task rows, from a repository's test files, with `ast`.

Every assertion with an expected value becomes one row. unittest `self.assertEqual(actual,
expected)` (and the other two-argument `assert*` methods) and pytest `assert actual == expected`
(and the other single comparators) qualify; `assertTrue(x)`, `assertRaises(...)` and a bare
`assert x` have no expected value and are not rows.

    prefix = the file's imports + the enclosing class header + its setUp + the test function's
             source up to the expected value (so it ends in "assertEqual(f(x), " or "f(x) == ")
    target = the expected value's source text

Files and targets that cannot be rows are counted by reason (syntax errors, undecodable or
binary files, gigantic files, targets too long), never fatal. `normalise` is the metric's
normalisation: exact match compares normalised strings.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import io
import tokenize
from collections import Counter
from pathlib import PurePosixPath
from typing import ClassVar

from workloads.config import require

COMPARATORS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Is, ast.IsNot, ast.In, ast.NotIn)
# unittest methods whose second positional argument is the expected value
TWO_ARGUMENT_ASSERTS = frozenset({
    "assertEqual", "assertEquals", "assertNotEqual", "assertAlmostEqual", "assertNotAlmostEqual",
    "assertIs", "assertIsNot", "assertIn", "assertNotIn", "assertIsInstance", "assertNotIsInstance",
    "assertGreater", "assertGreaterEqual", "assertLess", "assertLessEqual", "assertCountEqual",
    "assertListEqual", "assertTupleEqual", "assertSetEqual", "assertDictEqual", "assertSequenceEqual",
    "assertMultiLineEqual", "assertRegex", "assertNotRegex",
})
SETUP_METHODS = ("setUp", "setup_method")
ROW_FIELDS = ("repo_id", "commit_sha", "commit_index", "in_repo_split", "cross_repo_split", "test_file",
              "test_function", "prefix", "target")


@dataclasses.dataclass
class MiningConfig:
    """What counts as a row: target length, file size, the in-repo held-out share."""

    max_target_chars: int = 64  # longer expected values are skipped (the model completes short targets)
    max_file_bytes: int = 1_000_000  # bigger test files are skipped unread
    in_repo_test_fraction: float = 0.2  # of each repository's test files, held out in-repo (at least one of two or more)

    section: ClassVar[str] = "mining"

    def validate(self) -> None:
        require(self.max_target_chars >= 1, "max_target_chars", "must be >= 1")
        require(self.max_file_bytes >= 1, "max_file_bytes", "must be >= 1")
        require(0.0 <= self.in_repo_test_fraction < 1.0, "in_repo_test_fraction", "must be in [0, 1)")


def is_test_file(path: str) -> bool:
    """`test_*.py`, `*_test.py`, `test.py` or `tests.py`, anywhere in the tree."""
    name = PurePosixPath(path).name
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py") or name in ("test.py", "tests.py"))


def file_rank(seed: int, repo_id: str, test_file: str) -> float:
    """A test file's place in [0, 1) in its repository's seeded shuffle."""
    digest = hashlib.sha256(f"{seed}\0{repo_id}\0{test_file}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def held_out_rank(seed: int, repo_id: str, head_test_files: list[str], test_fraction: float) -> float:
    """The in-repo split of one repository as one number: test files whose rank is at most this
    are held out. It is the rank of the k-th file of HEAD's test files, k = max(1, round(fraction
    * n)), so a repository with two test files holds one out; with one (or none), nothing (-1).
    A file keeps its side at every commit of the evolving track, including files gone by HEAD."""
    ranks = sorted(file_rank(seed, repo_id, path) for path in head_test_files)
    if len(ranks) < 2 or test_fraction <= 0:
        return -1.0
    return ranks[max(1, round(test_fraction * len(ranks))) - 1]


def in_repo_split(seed: int, repo_id: str, test_file: str, held_out: float) -> str:
    return "test" if file_rank(seed, repo_id, test_file) <= held_out else "train"


def expected_value(statement: ast.stmt) -> ast.expr | None:
    """The expected-value node of an assertion statement, or None if it has none."""
    if isinstance(statement, ast.Assert):
        test = statement.test
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], COMPARATORS):
            return test.comparators[0]
        return None
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
        call = statement.value
        if (isinstance(call.func, ast.Attribute) and call.func.attr in TWO_ARGUMENT_ASSERTS
                and isinstance(call.func.value, ast.Name) and call.func.value.id == "self" and len(call.args) >= 2):
            return call.args[1]
    return None


def _is_import_block(statement: ast.stmt) -> bool:
    """An import, or a top-level try/if whose every statement is an import (optional dependencies)."""
    if isinstance(statement, (ast.Import, ast.ImportFrom)):
        return True
    if isinstance(statement, (ast.Try, ast.If)):
        inner = [s for s in ast.walk(statement) if isinstance(s, ast.stmt) and s is not statement]
        return bool(inner) and all(isinstance(s, (ast.Import, ast.ImportFrom, ast.Pass, ast.Try, ast.If)) for s in inner)
    return False


class _Source:
    """The file's text with ast positions (1-based lines, UTF-8 byte columns) turned into offsets."""

    def __init__(self, text: str):
        self.text = text
        self.line_starts = [0]
        for line in text.splitlines(keepends=True):
            self.line_starts.append(self.line_starts[-1] + len(line))
        self.lines = text.splitlines(keepends=True)

    def offset(self, line: int, byte_column: int) -> int:
        prefix = self.lines[line - 1].encode()[:byte_column].decode(errors="replace") if line <= len(self.lines) else ""
        return self.line_starts[line - 1] + len(prefix)

    def segment(self, node: ast.AST) -> str:
        """The node's source text (ast.get_source_segment re-splits the whole file on every call)."""
        return self.text[self.offset(node.lineno, node.col_offset):self.offset(node.end_lineno, node.end_col_offset)]

    def lines_between(self, first: int, last: int) -> str:
        """Whole lines first..last (1-based, inclusive)."""
        return "".join(self.lines[first - 1:last])


def _start_line(node: ast.AST) -> int:
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno, *(d.lineno for d in decorators)])


def _test_functions(tree: ast.Module):
    """(class or None, function) for every test function: module-level or in a class."""
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, functions) and node.name.startswith("test"):
            yield None, node
        elif isinstance(node, ast.ClassDef):
            for member in node.body:
                if isinstance(member, functions) and member.name.startswith("test"):
                    yield node, member


def _statements(function: ast.AST):
    """The statements of a test function, nested blocks included, not those of functions or
    classes defined inside it (their assertions belong to helpers, not to the test)."""
    for child in ast.iter_child_nodes(function):
        if isinstance(child, ast.stmt):
            yield child
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            yield from _statements(child)


def _context(source: _Source, tree: ast.Module, klass: ast.ClassDef | None) -> str:
    """The imports, then the class header and its setUp when the test is a method."""
    context = "\n".join(source.segment(s) for s in tree.body if _is_import_block(s)) + "\n\n\n"
    if klass is not None:
        context += source.lines_between(_start_line(klass), klass.body[0].lineno - 1)
        for member in klass.body:
            if isinstance(member, ast.FunctionDef) and member.name in SETUP_METHODS:
                context += source.lines_between(_start_line(member), member.end_lineno) + "\n"
    return context


def mine_source(text: str, *, max_target_chars: int, skips: Counter | None = None) -> list[dict]:
    """Rows {test_function, prefix, target} of one test file's text; what is skipped is counted."""
    skips = Counter() if skips is None else skips
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        skips["syntax error in test file"] += 1
        return []
    source, rows, contexts = _Source(text), [], {}
    for klass, function in _test_functions(tree):
        if klass not in contexts:
            contexts[klass] = _context(source, tree, klass)
        context = contexts[klass]
        start = source.line_starts[_start_line(function) - 1]
        name = f"{klass.name}.{function.name}" if klass else function.name
        for statement in _statements(function):
            expected = expected_value(statement)
            if expected is None:
                continue
            target = source.segment(expected)
            if "\n" in target or len(target) > max_target_chars:
                skips["target too long or multi-line"] += 1
                continue
            cut = source.offset(expected.lineno, expected.col_offset)
            rows.append({"test_function": name, "prefix": context + text[start:cut], "target": target,
                         "_position": cut})
    rows.sort(key=lambda row: row.pop("_position"))  # source order within each function
    return rows


def decode_test_file(data: bytes) -> str | None:
    """The file's text, or None for binary or undecodable bytes."""
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def mine_files(files: dict[str, bytes], sizes: dict[str, int], *, repo_id: str, commit_sha: str, commit_index: int,
               cross_repo_split: str, held_out: float, seed: int, config: MiningConfig, skips: Counter) -> list[dict]:
    """Rows with every field of `ROW_FIELDS` from one commit's test files (`files`: path -> bytes;
    `held_out`: the repository's `held_out_rank`)."""
    rows = []
    for path in sorted(sizes):
        if sizes[path] > config.max_file_bytes:
            skips["test file too large"] += 1
            continue
        text = decode_test_file(files.get(path, b""))
        if text is None:
            skips["binary or undecodable test file"] += 1
            continue
        split = in_repo_split(seed, repo_id, path, held_out)
        for row in mine_source(text, max_target_chars=config.max_target_chars, skips=skips):
            rows.append({"repo_id": repo_id, "commit_sha": commit_sha, "commit_index": commit_index,
                         "in_repo_split": split, "cross_repo_split": cross_repo_split, "test_file": path, **row})
    return rows


def normalise(text: str) -> str:
    """The metric's normal form: the first line, comments stripped, trailing `:`, `,`, spaces and
    tabs stripped, whitespace collapsed."""
    line = text.split("\n", 1)[0]
    tokens = tokenize.generate_tokens(io.StringIO(line).readline)
    try:  # a real comment, not a '#' inside a string; an unclosed bracket only fails after the line's tokens
        for token in tokens:
            if token.type == tokenize.COMMENT:
                line = line[:token.start[1]]
                break
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return " ".join(line.rstrip(":, \t").split())


def exact_match(prediction: str, target: str) -> bool:
    return normalise(prediction) == normalise(target)


def mined_commits(python_commits: list[str], head: str, every: int) -> list[str]:
    """The commits mined, oldest first, HEAD last: every `every`-th commit that changes Python
    files (the evolving track), or HEAD alone when `every` is 0. A row's `commit_index` is its
    commit's place in this list."""
    sequence = python_commits if python_commits and python_commits[-1] == head else [*python_commits, head]
    if every <= 0:
        return [head]
    chosen = sequence[::every]
    return chosen if chosen[-1] == head else [*chosen, head]

