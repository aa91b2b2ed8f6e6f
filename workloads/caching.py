"""Content-addressed caches on disk: one hash helper and one cached-directory helper, for every
cache the pipelines keep (built data sets, SFT-ed students and readers).

A cached directory is whole or absent: it is built in a staging directory beside it, marked
complete, and renamed into place. Two concurrent builders (two Tune trials) may both build;
the first rename wins and the other uses the winner's copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

COMPLETE_MARKER = "BUILT"
# Cache entries the repository ships for its embedded defaults (`data/<kind>/<key>/`), so a fresh
# clone skips their slowest stage; each kind's README there gives the command that rebuilds them.
COMMITTED_ROOT = Path(__file__).resolve().parents[1] / "data"


def stable_hash(records: Iterable[Any]) -> str:
    """16 hex digits of sha256 over the sorted-key JSON of every record: the same records give the
    same hash in every process and on every machine (the MLflow `data_hash` tag and cache keys)."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def is_complete(directory: Path) -> bool:
    return (Path(directory) / COMPLETE_MARKER).is_file()


def committed_entry(kind: str, key: str) -> Path | None:
    """The committed copy of cache entry `key` of `kind` (`data/<kind>/<key>/`), if the repository ships one."""
    directory = COMMITTED_ROOT / kind / key
    return directory if directory.is_dir() and any(directory.iterdir()) else None


def cached_directory(directory: str | Path, build: Callable[[Path], object]) -> Path:
    """`directory` when a complete copy exists; otherwise `build(staging)` fills a fresh staging
    directory, which is marked complete and renamed to `directory`."""
    directory = Path(directory)
    if is_complete(directory):
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        build(staging)
        (staging / COMPLETE_MARKER).write_text("ok\n")
        if not is_complete(directory):
            shutil.rmtree(directory, ignore_errors=True)  # a partial copy from a crashed build
        try:
            staging.rename(directory)
        except OSError:
            if not is_complete(directory):  # not a concurrent builder's finished copy: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def write_parquet(table, path: Path) -> None:
    """One Parquet file, whole or not at all: written under a dot-name (which Parquet readers
    skip) and renamed into place."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    pq.write_table(table, partial)
    os.replace(partial, path)
