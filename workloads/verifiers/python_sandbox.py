"""A pool of warm, sandboxed Python check servers ("zygotes") driven with asyncio.

Verdicts (zygote.py): in the default `isolated` mode the candidate's code runs in its own
process and the tests in a separate judge process that calls it over a pipe with inert
values (inert.py), so nothing the code does can write or fake the verdict; `in_process`
runs code and tests in one process, as a plain `exec` harness does, and its verdicts say
`forgeable: true`. Step jobs (`verify_steps`) run a program step by step in the sandbox and
the judge compares its variables after each step with reference states.

Isolation (`isolation="bubblewrap"`, the default): each zygote runs inside bubblewrap with new
PID, network, IPC, UTS and mount namespaces, read-only system directories, a private tmpfs
/tmp, and nothing else of the host's filesystem. Run as root, the zygote keeps only the
capabilities it needs to drop each check to its own non-root uid (`uid_base + worker index`),
so RLIMIT_NPROC binds and a check cannot signal the zygote; run unprivileged, bubblewrap
uses a user namespace and checks share the caller's uid (weaker: a check can kill its
zygote, which is then replaced and the check re-run, see `verify_batch`).

`isolation="rlimits-only"` runs zygotes without namespaces (rlimits, a private work dir and
process-group cleanup only). It exists for machines where bubblewrap cannot run and must be
chosen explicitly; it warns at every start.

The pool itself never forks its own (large) process for a check: it only talks to zygotes,
and each zygote forks a child per check.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

from workloads.verifiers import inert

logger = logging.getLogger(__name__)

STATUSES = ("passed", "failed", "runtime_error", "syntax_error", "timeout", "memory_limit", "output_limit",
            "invalid_result", "invalid_request", "sandbox_error")
# Verdicts the machine can cause (load, a lost sandbox, a limit hit by a neighbour) are not cached:
# a timeout under load must not become a permanent zero reward.
UNCACHED = frozenset({"timeout", "memory_limit", "sandbox_error", "invalid_request"})
MODES = ("isolated", "in_process")
ZYGOTE_SCRIPT = Path(__file__).with_name("zygote.py")
INERT_SCRIPT = Path(__file__).with_name("inert.py")
SANDBOX_ZYGOTE_PATH = "/opt/rayworks/zygote.py"
ZYGOTE_CAPABILITIES = ("CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_FOWNER", "CAP_DAC_OVERRIDE")
Isolation = Literal["bubblewrap", "rlimits-only"]


class IsolationUnavailable(RuntimeError):
    """The requested sandbox cannot run on this machine."""


@dataclasses.dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0
    memory_mb: int = 512
    file_size_mb: int = 16
    open_files: int = 64
    processes: int = 32
    output_bytes: int = 64 * 1024
    tmpfs_mb: int = 64


@dataclasses.dataclass(frozen=True)
class PythonJob:
    """Code plus tests: asserts at top level, or a `check(candidate)` function with `entry_point`.

    `mode="isolated"` (default) judges from a process the code cannot reach; `"in_process"` is
    forgeable and exists for tests that need objects that cannot cross a pipe. A step job has
    `steps` (source per step) and `reference_states` (per step, {variable: expected value})."""

    code: str
    tests: str = ""
    entry_point: str | None = None
    limits: Limits = Limits()
    mode: str = "isolated"
    steps: tuple[str, ...] | None = None
    reference_states: tuple[dict, ...] | None = None

    def request(self) -> dict:
        """What the zygote receives."""
        request = {"code": self.code, "tests": self.tests, "entry_point": self.entry_point,
                   "limits": dataclasses.asdict(self.limits), "mode": self.mode}
        if self.steps is not None:
            request["steps"] = list(self.steps)
            request["reference_states"] = [inert.encode(dict(state)) for state in self.reference_states]
        return request

    def cache_key(self) -> str:
        return hashlib.sha256(json.dumps(self.request(), sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class InvalidJob:
    """A job that could not be read: it gets its own `invalid_request` verdict in its batch."""

    message: str


@dataclasses.dataclass
class Verdict:
    status: str
    message: str = ""
    failed_test: dict | None = None
    duration_s: float = 0.0
    output: str = ""
    cached: bool = False
    attempts: int = 1
    isolation: str = "isolated"
    forgeable: bool = False  # in_process: the checked code could have written this verdict
    steps: list[dict] | None = None  # step jobs: one record per step
    first_failure: int | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class StepsVerdict:
    steps: list[Verdict]
    first_failure: int | None
    verdict: Verdict  # the whole job's (a timeout ends every step)


JOB_FIELDS = ("code", "tests", "entry_point", "timeout_s", "limits", "mode")
LIMIT_FIELDS = tuple(field.name for field in dataclasses.fields(Limits))


def parse_job(record: Any, default_limits: Limits = Limits(), max_timeout_s: float = 60.0) -> PythonJob | InvalidJob:
    """A job dict {"code", "tests"?, "entry_point"?, "timeout_s"?, "limits"?, "mode"?} as a
    PythonJob, or an InvalidJob whose message names the field that is wrong."""
    def invalid(field: str, problem: str) -> InvalidJob:
        return InvalidJob(f"{field}: {problem}")

    def positive(value: Any) -> bool:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0

    if not isinstance(record, dict):
        return invalid("job", f"expected an object with a 'code' string, got {type(record).__name__}")
    unknown = sorted(set(record) - set(JOB_FIELDS))
    if unknown:
        return invalid(unknown[0], f"unknown field (known: {', '.join(JOB_FIELDS)})")
    if not isinstance(record.get("code"), str):
        return invalid("code", "required, a string")
    for field in ("tests", "entry_point"):
        if record.get(field) is not None and not isinstance(record[field], str):
            return invalid(field, "must be a string")
    if record.get("entry_point") is not None and not record["entry_point"].isidentifier():
        return invalid("entry_point", "must be a Python identifier")
    mode = record.get("mode") or "isolated"
    if mode not in MODES:
        return invalid("mode", f"expected one of {', '.join(MODES)}, got {mode!r}")
    overrides = record.get("limits") or {}
    if not isinstance(overrides, dict):
        return invalid("limits", "must be an object")
    for key, value in overrides.items():
        if key not in LIMIT_FIELDS:
            return invalid(f"limits.{key}", f"unknown limit (known: {', '.join(LIMIT_FIELDS)})")
        if not positive(value):
            return invalid(f"limits.{key}", "must be a positive number")
    limits = dataclasses.replace(default_limits, **{k: type(getattr(default_limits, k))(v) for k, v in overrides.items()})
    if record.get("timeout_s") is not None:
        if not positive(record["timeout_s"]):
            return invalid("timeout_s", "must be a positive number")
        limits = dataclasses.replace(limits, timeout_s=float(record["timeout_s"]))
    if limits.timeout_s > max_timeout_s:
        return invalid("timeout_s", f"at most {max_timeout_s} s")
    return PythonJob(record["code"], record.get("tests") or "", record.get("entry_point"), limits, mode)


def _ancestors(path: Path) -> list[str]:
    return [str(p) for p in reversed(path.parents) if str(p) != "/"]


def bubblewrap_command(worker_index: int, limits: Limits, uid_base: int) -> list[str]:
    """The bwrap command line that starts one zygote."""
    python = Path(os.path.realpath(sys.executable))
    prefix = Path(sys.base_prefix).resolve()
    as_root = os.geteuid() == 0
    command = ["bwrap", "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net", "--unshare-ipc",
               "--unshare-uts", "--unshare-cgroup-try"]
    if as_root:
        command += ["--cap-drop", "ALL"] + [arg for cap in ZYGOTE_CAPABILITIES for arg in ("--cap-add", cap)]
    else:
        command += ["--unshare-user"]
    command += ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib64", "lib32"):
        host = Path("/") / name
        if host.is_symlink():
            command += ["--symlink", os.readlink(host), str(host)]
        elif host.exists():
            command += ["--ro-bind", str(host), str(host)]
    if not str(prefix).startswith("/usr/"):
        for directory in _ancestors(prefix):  # bwrap would create them 0700: unreadable for checks
            command += ["--perms", "0755", "--dir", directory]
        command += ["--ro-bind", str(prefix), str(prefix)]
    command += ["--perms", "0755", "--dir", "/opt/rayworks", "--ro-bind", str(ZYGOTE_SCRIPT), SANDBOX_ZYGOTE_PATH,
                "--ro-bind", str(INERT_SCRIPT), "/opt/rayworks/inert.py",
                "--proc", "/proc", "--dev", "/dev",
                "--size", str(limits.tmpfs_mb * 1024 * 1024), "--perms", "1777", "--tmpfs", "/tmp",
                "--chdir", "/tmp", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
                "--setenv", "LANG", "C.UTF-8", "--"]
    uid = str(uid_base + worker_index) if as_root else "-"
    return command + [str(python), "-I", "-S", SANDBOX_ZYGOTE_PATH, "--uid", uid, "--pidns", "1", "--workdir", "/tmp"]


def require_bubblewrap(opt_out: str) -> None:
    """IsolationUnavailable unless bwrap is installed; `opt_out` says how to run without it."""
    if shutil.which("bwrap") is None:
        raise IsolationUnavailable(
            f"bubblewrap (bwrap) is not installed: install it (Debian/Ubuntu: apt-get install bubblewrap), or {opt_out}")


def probe_bubblewrap(limits: Limits, uid_base: int) -> None:
    """Start one throwaway sandbox; raise IsolationUnavailable with bubblewrap's own words."""
    require_bubblewrap("pass isolation='rlimits-only' to run checks with rlimits only (no filesystem, network or PID isolation)")
    command = bubblewrap_command(0, limits, uid_base)
    command = command[: command.index("--") + 1] + [command[command.index("--") + 1], "-I", "-S", "-c", "print('ok')"]
    try:
        probe = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise IsolationUnavailable("bubblewrap did not start a sandbox within 30 s") from None
    if probe.returncode != 0 or probe.stdout.strip() != "ok":
        raise IsolationUnavailable(
            f"bubblewrap cannot create a sandbox here ({probe.stderr.strip() or 'exit ' + str(probe.returncode)}); "
            "user namespaces may be blocked (common in containers). Allow them, run privileged, or pass "
            "isolation='rlimits-only' to run checks with rlimits only (weaker isolation)"
        )


class _Zygote:
    def __init__(self, index: int, process: asyncio.subprocess.Process, workdir: str | None):
        self.index = index
        self.process = process
        self.workdir = workdir
        self.checks_done = 0

    async def check(self, requests: list[dict], backstop_s: float) -> list[dict]:
        if self.process.returncode is not None:
            raise ConnectionError(f"zygote {self.index} exited (code {self.process.returncode})")
        self.process.stdin.write(json.dumps({"jobs": requests}).encode() + b"\n")
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout=backstop_s)
        if not line:
            raise ConnectionError(f"zygote {self.index} exited (code {self.process.returncode})")
        self.checks_done += len(requests)
        verdicts = json.loads(line)["verdicts"]
        if len(verdicts) != len(requests):
            raise ValueError(f"zygote {self.index} answered {len(verdicts)} verdicts for {len(requests)} jobs")
        return verdicts

    async def close(self) -> None:
        if self.process.returncode is None:
            try:
                self.process.kill()
            except ProcessLookupError:
                pass
            await self.process.wait()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


class PythonSandboxPool:
    """`await pool.verify_batch(jobs)` -> one Verdict per job, in order."""

    MAX_CHUNK = 16

    def __init__(self, num_workers: int | None = None, isolation: Isolation = "bubblewrap", recycle_every: int = 500,
                 max_attempts: int = 3, cache_size: int = 100_000, uid_base: int = 20000, limits: Limits = Limits()):
        if isolation not in ("bubblewrap", "rlimits-only"):
            raise ValueError(f"isolation: expected 'bubblewrap' or 'rlimits-only', got {isolation!r}")
        # Two zygotes per core: one runs a check while the other's result crosses the pipe.
        self.num_workers = num_workers or 2 * (os.cpu_count() or 1)
        self.isolation = isolation
        self.recycle_every = recycle_every
        self.max_attempts = max_attempts
        self.uid_base = uid_base
        self.default_limits = limits
        self._cache: OrderedDict[str, Verdict] = OrderedDict()
        self._cache_size = cache_size
        self._idle: asyncio.Queue[_Zygote] | None = None
        self._zygotes: dict[int, _Zygote] = {}
        self.stats = {"checks": 0, "cache_hits": 0, "sandbox_errors": 0, "zygotes_started": 0}
        if isolation == "bubblewrap":
            probe_bubblewrap(limits, uid_base)

    async def start(self) -> None:
        if self._idle is not None:
            return
        if self.isolation == "rlimits-only":
            logger.warning("Python verifier running with isolation='rlimits-only': no filesystem, network or PID "
                           "isolation; checks can read and write what this user can")
        self._idle = asyncio.Queue()
        zygotes = await asyncio.gather(*(self._spawn(i) for i in range(self.num_workers)))
        for zygote in zygotes:
            self._idle.put_nowait(zygote)

    async def _spawn(self, index: int) -> _Zygote:
        workdir = None
        if self.isolation == "bubblewrap":
            command = bubblewrap_command(index, self.default_limits, self.uid_base)
        else:
            workdir = tempfile.mkdtemp(prefix=f"rayworks-check-{index}-")
            uid = "-"
            if os.geteuid() == 0:  # still drop checks to their own uid: RLIMIT_NPROC must bind
                uid = str(self.uid_base + index)
                os.chown(workdir, int(uid), int(uid))
            command = [sys.executable, "-I", "-S", str(ZYGOTE_SCRIPT), "--uid", uid, "--pidns", "0", "--workdir", workdir]
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, limit=16 * 1024 * 1024,
        )
        ready = await asyncio.wait_for(process.stdout.readline(), timeout=30)
        if not ready.startswith(b'{"ready"'):
            raise IsolationUnavailable(f"zygote {index} failed to start (exit {process.returncode})")
        zygote = _Zygote(index, process, workdir)
        self._zygotes[index] = zygote
        self.stats["zygotes_started"] += 1
        return zygote

    async def _replace(self, zygote: _Zygote) -> _Zygote:
        await zygote.close()
        return await self._spawn(zygote.index)

    async def _check_chunk(self, jobs: list[PythonJob]) -> tuple[list[dict], bool]:
        """Run `jobs` on one idle zygote: (verdict records, whether the zygote died)."""
        zygote = await self._idle.get()
        died = False
        try:
            requests = [job.request() for job in jobs]
            backstop = sum(j.limits.timeout_s + 1 for j in jobs) + 15
            try:
                records = await zygote.check(requests, backstop_s=backstop)
            except Exception as exc:  # exited, pipe closed under us (a closed transport), garbage, no answer
                died = True
                records = [{"status": "sandbox_error", "message": f"sandbox lost during the check: {exc!r}"}] * len(jobs)
            if died or zygote.checks_done >= self.recycle_every:
                zygote = await self._replace(zygote)
        finally:
            self._idle.put_nowait(zygote)
        return records, died

    async def verify(self, job: PythonJob, first_record: dict | None = None, key: str | None = None) -> Verdict:
        """One job with retries; `first_record` is an attempt already made in a batch."""
        key = key or job.cache_key()
        if key in self._cache:
            self._cache.move_to_end(key)
            self.stats["cache_hits"] += 1
            return dataclasses.replace(self._cache[key], cached=True)
        deaths, record, attempt = 0, first_record, 1 if first_record else 0
        while record is None or (record["status"] == "sandbox_error" and attempt < self.max_attempts):
            if record is not None:
                self.stats["sandbox_errors"] += 1
            (record,), died = await self._check_chunk([job])
            attempt += 1
            deaths += died
            if deaths >= 2:
                # The same code took down a fresh sandbox twice: that is the code's doing.
                record = {"status": "runtime_error", "message": "the check killed its sandbox process (twice)"}
        verdict = Verdict(status=record.get("status", "sandbox_error"), message=record.get("message", ""),
                          failed_test=record.get("failed_test"), duration_s=record.get("duration_s", 0.0),
                          output=record.get("output", ""), attempts=attempt, isolation=job.mode,
                          forgeable=job.mode == "in_process", steps=record.get("steps"),
                          first_failure=record.get("first_failure"))
        self.stats["checks"] += 1
        if verdict.status not in UNCACHED:
            self._cache[key] = verdict
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return verdict

    async def verify_batch(self, jobs: list[PythonJob | InvalidJob]) -> list[Verdict]:
        """Verdicts in the order of `jobs`. Identical jobs (GRPO groups) are checked once;
        the rest go out in chunks, several per zygote request, and a sandbox failure is
        retried job by job. An InvalidJob gets its own `invalid_request` verdict."""
        await self.start()
        valid = [job for job in jobs if isinstance(job, PythonJob)]
        keys = [job.cache_key() for job in valid]  # sha256 of each job, once
        unique = dict(zip(keys, valid))
        pending_keys = [key for key in unique if key not in self._cache]
        pending = [unique[key] for key in pending_keys]
        size = max(1, min(self.MAX_CHUNK, -(-len(pending) // (2 * self.num_workers))))
        chunks = [pending[i : i + size] for i in range(0, len(pending), size)]
        outcomes = await asyncio.gather(*(self._check_chunk(chunk) for chunk in chunks))
        records = [record for chunk_records, died in outcomes for record in
                   (chunk_records if not died else [None] * len(chunk_records))]
        first = dict(zip(pending_keys, records))
        verdicts = await asyncio.gather(*(self.verify(job, first.get(key), key) for key, job in unique.items()))
        by_key = dict(zip(unique, verdicts))
        answers = iter(by_key[key] for key in keys)
        return [next(answers) if isinstance(job, PythonJob) else Verdict("invalid_request", message=job.message)
                for job in jobs]

    async def verify_steps(self, steps: list[str], reference_states: list[dict], limits: Limits | None = None) -> StepsVerdict:
        """Run `steps` in order in one sandboxed candidate process; after step i the judge
        compares the variables named in reference_states[i] with their expected values."""
        if len(steps) != len(reference_states):
            raise ValueError(f"verify_steps: {len(steps)} steps but {len(reference_states)} reference states")
        for index, state in enumerate(reference_states):
            try:
                inert.encode(dict(state))
            except inert.NotAValue as exc:
                raise ValueError(f"verify_steps: reference_states[{index}]: {exc}") from None
        job = PythonJob("", limits=limits or self.default_limits, steps=tuple(steps),
                        reference_states=tuple(dict(state) for state in reference_states))
        (verdict,) = await self.verify_batch([job])
        if verdict.steps is None:  # the whole job ended (timeout, lost sandbox): no step verified
            return StepsVerdict([dataclasses.replace(verdict)] * len(steps), 0 if steps else None, verdict)
        step_verdicts = [Verdict(status=r.get("status", "sandbox_error"), message=r.get("message", ""),
                                 failed_test={"mismatches": r["mismatches"]} if r.get("mismatches") else None)
                         for r in verdict.steps]
        return StepsVerdict(step_verdicts, verdict.first_failure, verdict)

    async def close(self) -> None:
        await asyncio.gather(*(z.close() for z in self._zygotes.values()))
        self._zygotes.clear()
        self._idle = None
