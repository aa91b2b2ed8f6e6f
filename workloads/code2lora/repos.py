"""Git repositories as Code2LoRA reads them: a bundle file or any git checkout, opened
read-only through the `git` command line.

A bundle is cloned bare into a scratch directory once (a clone of a bundle is local and takes
milliseconds); a checkout is read in place. Everything else goes through `git` plumbing:
`rev-list` for the history, `ls-tree` for a commit's files, one `cat-file --batch` process per
read for the blobs, `diff` for a commit's Python changes. A path that is neither a bundle nor a
git repository, or a corrupt bundle, is a `RepositoryError` that names the path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

PYTHON_FILES = "*.py"


class RepositoryError(ValueError):
    """A repository that cannot be read; the message names the path and what git said."""


def _git(git_dir: Path, *args: str, input: bytes | None = None) -> bytes:
    done = subprocess.run(["git", f"--git-dir={git_dir}", *args], input=input, capture_output=True)
    if done.returncode != 0:
        raise RepositoryError(f"{git_dir}: git {' '.join(args[:2])} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


@dataclasses.dataclass(frozen=True)
class Repository:
    """One opened repository: `name` (the bundle's stem or the checkout's directory name) and
    the git directory every command reads."""

    name: str
    git_dir: Path
    source: str

    def head(self) -> str:
        return _git(self.git_dir, "rev-parse", "HEAD").decode().strip()

    def python_commits(self) -> list[str]:
        """The first-parent history of HEAD that changes Python files, oldest first: the
        sequence the evolving track walks (each commit's diff is against its first parent)."""
        out = _git(self.git_dir, "rev-list", "--first-parent", "--reverse", "HEAD", "--", PYTHON_FILES)
        return out.decode().split()

    def files(self, commit: str) -> dict[str, int]:
        """path -> size in bytes of every blob in the commit's tree."""
        files = {}
        for line in _git(self.git_dir, "ls-tree", "-r", "-l", "-z", commit).split(b"\0"):
            if not line:
                continue
            meta, path = line.split(b"\t", 1)
            _mode, kind, _sha, size = meta.split()
            if kind == b"blob":
                files[path.decode(errors="replace")] = int(size)
        return files

    def read(self, commit: str, paths: list[str]) -> dict[str, bytes]:
        """The contents of `paths` at `commit`, read through one `git cat-file --batch`."""
        if not paths:
            return {}
        out = _git(self.git_dir, "cat-file", "--batch", input="".join(f"{commit}:{p}\n" for p in paths).encode())
        contents, position = {}, 0
        for path in paths:
            header_end = out.index(b"\n", position)
            header = out[position:header_end].split()
            if header[-1] == b"missing":
                position = header_end + 1
                continue
            size = int(header[2])
            contents[path] = out[header_end + 1: header_end + 1 + size]
            position = header_end + 1 + size + 1  # the blob, then its newline
        return contents

    def python_diff(self, commit: str, since: str | None = None) -> str:
        """The changes to Python files from `since` (None: the empty tree) to `commit`."""
        base = since or _git(self.git_dir, "hash-object", "-t", "tree", "/dev/null").decode().strip()
        return _git(self.git_dir, "diff", "--no-color", "--no-ext-diff", base, commit, "--", PYTHON_FILES).decode(errors="replace")


def open_repository(source: str | Path, scratch: str | Path) -> Repository:
    """A bundle file (cloned bare under `scratch`, once per bundle content) or a git checkout."""
    path = Path(source).expanduser().resolve()
    if path.is_file():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        target = Path(scratch) / f"{path.stem}-{digest}.git"
        if not (target / "HEAD").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
            done = subprocess.run(["git", "clone", "--quiet", "--bare", str(path), str(staging / "repo")], capture_output=True)
            try:
                if done.returncode != 0:
                    raise RepositoryError(f"{path}: not a readable git bundle ({done.stderr.decode(errors='replace').strip()})")
                try:
                    (staging / "repo").rename(target)
                except OSError:  # another reader cloned the same bundle first: use its copy
                    if not (target / "HEAD").is_file():
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return Repository(path.stem, target, str(path))
    if path.is_dir():
        done = subprocess.run(["git", "-C", str(path), "rev-parse", "--absolute-git-dir"], capture_output=True)
        if done.returncode != 0:
            raise RepositoryError(f"{path}: not a git repository")
        return Repository(path.name, Path(done.stdout.decode().strip()), str(path))
    raise RepositoryError(f"{path}: no such bundle or directory")


def repository_sources(repos: str | Path) -> list[Path]:
    """The repositories under `repos`: its `*.bundle` files and git checkouts (sorted by name),
    or `repos` itself when it is one bundle or one checkout."""
    root = Path(repos).expanduser()
    if not root.exists():
        raise RepositoryError(f"{root}: no such directory")
    if root.is_file() or (root / ".git").exists():
        return [root]
    found = [p for p in sorted(root.iterdir()) if (p.is_file() and p.suffix == ".bundle") or (p / ".git").exists()]
    if not found:
        raise RepositoryError(f"{root}: holds no *.bundle file and no git checkout")
    return found
