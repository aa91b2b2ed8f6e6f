"""Lean 4 proof checking through the Lean REPL's JSON protocol, with warm REPL pools.

Protocol (leanprover-community/repl): a request `{"cmd": "...", "env": n}` followed by a blank
line; the response is one JSON object followed by a blank line, with `messages` (each with
`severity`, `pos`, `endPos`, `data`), `sorries` and the new `env`; empty fields are omitted.
Errors come back as `{"message": "Unknown environment."}`.

A pool is kept per import header: every REPL elaborates the header once (`env` 0 of that
REPL) and each proof is sent against that environment. A timeout, EOF or non-JSON output
counts as a crash: the REPL's process group is killed, a hot spare that already imported the
header takes its place, and a new spare is built in the background. REPLs are also recycled
when their resident memory passes a ceiling.

Soundness: a proof passes only with no error, no `sorries`, and no "declaration uses 'sorry'"
warning (either quote style). Before Lean sees it, a proof is rejected if it changes the
theorem statement, declares an `axiom`, or uses `#exit` or another banned command.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

BANNED = [
    (re.compile(r"^\s*(private\s+|protected\s+)?axiom\b", re.M), "declares an axiom"),
    (re.compile(r"#exit\b"), "uses #exit"),
    (re.compile(r"\bsorryAx\b"), "uses sorryAx"),
    (re.compile(r"\bset_option\s+debug\.skipKernelTC\b"), "disables the kernel check"),
    (re.compile(r"@\[\s*(implemented_by|extern)\b"), "replaces code by an external implementation"),
    (re.compile(r"\bunsafe\b"), "uses unsafe definitions"),
    (re.compile(r"^\s*(elab|macro|syntax|macro_rules|elab_rules)\b", re.M), "defines syntax or elaborators"),
    (re.compile(r"\brun_(cmd|tac|elab)\b"), "runs meta code"),
    (re.compile(r"^\s*import\b", re.M), "imports outside the header"),
]
SORRY_WARNING = re.compile(r"declaration uses ['`]sorry['`]")


class LeanToolchainNotFound(RuntimeError):
    pass


@dataclasses.dataclass
class LeanConfig:
    # The REPL command, run inside `project_dir` (a Lake project that depends on the REPL).
    command: tuple[str, ...] = ("lake", "env", "repl")
    project_dir: str = "."
    repls_per_header: int = 2
    timeout_s: float = 60.0
    header_timeout_s: float = 600.0  # importing Mathlib takes minutes
    max_rss_mb: int = 8192
    sandbox: bool = True  # run each REPL under bubblewrap (no network, read-only system)


@dataclasses.dataclass
class LeanVerdict:
    status: str  # passed, failed, rejected, timeout, crashed, sandbox_error
    messages: list[dict] = dataclasses.field(default_factory=list)
    sorries: list[dict] = dataclasses.field(default_factory=list)
    message: str = ""
    duration_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def find_toolchain(config: LeanConfig) -> list[str]:
    """The REPL command with its executable resolved, or LeanToolchainNotFound saying how to fix it."""
    executable = shutil.which(config.command[0])
    if executable is None:
        raise LeanToolchainNotFound(
            f"Lean toolchain not found: `{config.command[0]}` is not on PATH. Install Lean with elan "
            "(https://github.com/leanprover/elan), create a Lake project that requires "
            "leanprover-community/repl (and Mathlib if proofs need it), run `lake build repl` there, then "
            "configure LeanConfig(project_dir=<that project>, command=('lake', 'env', 'repl')) "
            "or pass `--lean-project DIR` to `rayworks serve verifier`"
        )
    if not Path(config.project_dir).is_dir():
        raise LeanToolchainNotFound(f"Lean toolchain not found: project_dir {config.project_dir!r} is not a directory")
    return [executable, *config.command[1:]]


def screen(proof: str, statement: str | None = None) -> str | None:
    """Why `proof` is refused before Lean runs, or None when it may be checked."""
    for pattern, reason in BANNED:
        if pattern.search(proof):
            return f"rejected: the proof {reason}"
    if statement is not None and " ".join(statement.split()) not in " ".join(proof.split()):
        return "rejected: the theorem statement was changed"
    return None


def split_header(text: str) -> tuple[str, str, int]:
    """(import header, body, number of header lines) of a whole Lean file."""
    lines = text.split("\n")
    count = 0
    while count < len(lines) and (lines[count].startswith("import ") or not lines[count].strip()):
        count += 1
    return "\n".join(lines[:count]), "\n".join(lines[count:]), count


def judge(response: dict, line_offset: int = 0) -> LeanVerdict:
    """Turn a REPL response into a verdict, shifting message positions by `line_offset`."""
    if "message" in response and "env" not in response:
        return LeanVerdict("crashed", message=f"REPL error: {response['message']}")
    messages = [dict(m) for m in response.get("messages", [])]
    for message in messages:
        for key in ("pos", "endPos"):
            if isinstance(message.get(key), dict):
                message[key] = {**message[key], "line": message[key].get("line", 0) + line_offset}
    sorries = response.get("sorries", [])
    errors = [m for m in messages if m.get("severity") == "error"]
    sorry_warnings = [m for m in messages if SORRY_WARNING.search(str(m.get("data", "")))]
    if errors:
        return LeanVerdict("failed", messages, sorries, message=str(errors[0].get("data", ""))[:2000])
    if sorries or sorry_warnings:
        return LeanVerdict("failed", messages, sorries, message="the proof uses sorry")
    return LeanVerdict("passed", messages, sorries)


class ReplCrashed(RuntimeError):
    pass


class LeanRepl:
    """One REPL process (its own process group) that has elaborated `header` as `env`."""

    def __init__(self, command: list[str], cwd: str):
        self.command, self.cwd = command, cwd
        self.process: asyncio.subprocess.Process | None = None
        self.env: int | None = None

    async def start(self, header: str, timeout_s: float) -> "LeanRepl":
        self.process = await asyncio.create_subprocess_exec(
            *self.command, cwd=self.cwd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True, limit=64 * 1024 * 1024,
        )
        response = await self.send({"cmd": header} if header.strip() else {"cmd": ""}, timeout_s)
        if "env" not in response:
            await self.kill()
            raise ReplCrashed(f"the header did not elaborate: {json.dumps(response)[:500]}")
        self.env = response["env"]
        return self

    async def send(self, request: dict, timeout_s: float) -> dict:
        assert self.process is not None
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n\n")
            await self.process.stdin.drain()
            return await asyncio.wait_for(self._read_response(), timeout=timeout_s)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ReplCrashed(f"REPL input closed: {exc!r}") from None

    async def _read_response(self) -> dict:
        lines = []
        while True:
            line = await self.process.stdout.readline()
            if not line:
                raise ReplCrashed(f"REPL exited (EOF, code {self.process.returncode})")
            if not line.strip():
                if lines:
                    break
                continue
            lines.append(line)
        text = b"".join(lines).decode("utf-8", "replace")
        try:
            response = json.loads(text)
        except ValueError:
            raise ReplCrashed(f"REPL wrote non-JSON output: {text[:200]!r}") from None
        if not isinstance(response, dict):
            raise ReplCrashed(f"REPL wrote a non-object: {text[:200]!r}")
        return response

    def rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.process.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except (OSError, AttributeError):
            pass
        return 0.0

    async def kill(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await self.process.wait()


class LeanReplPool:
    """Warm REPLs per header plus one hot spare each; `await pool.check(header, proof)`."""

    def __init__(self, config: LeanConfig = LeanConfig(), command: list[str] | None = None):
        self.config = config
        self.command = self._sandboxed(command or find_toolchain(config))
        self._idle: dict[str, asyncio.Queue[LeanRepl]] = {}
        self._spares: dict[str, asyncio.Task] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.stats = {"checks": 0, "crashes": 0, "timeouts": 0, "recycled": 0, "repls_started": 0}

    def _sandboxed(self, command: list[str]) -> list[str]:
        if not self.config.sandbox or shutil.which("bwrap") is None:
            return command
        project = str(Path(self.config.project_dir).resolve())
        # Read-only host, private /tmp, no network; then the project (writable: Lake builds
        # there) and the command's own files, which a private /tmp would otherwise hide.
        binds = ["--ro-bind", "/", "/", "--tmpfs", "/tmp", "--dev", "/dev", "--proc", "/proc", "--bind", project, project]
        for arg in command:
            if os.path.isabs(arg) and os.path.exists(arg):
                parent = str(Path(arg).resolve().parent)
                binds += ["--ro-bind", parent, parent]
        return ["bwrap", "--die-with-parent", "--unshare-net", "--unshare-pid", "--unshare-ipc", *binds, "--", *command]

    async def _new_repl(self, header: str) -> LeanRepl:
        self.stats["repls_started"] += 1
        return await LeanRepl(self.command, self.config.project_dir).start(header, self.config.header_timeout_s)

    async def _ensure(self, header: str) -> asyncio.Queue:
        lock = self._locks.setdefault(header, asyncio.Lock())
        async with lock:
            if header not in self._idle:
                repls = await asyncio.gather(*(self._new_repl(header) for _ in range(self.config.repls_per_header)))
                queue: asyncio.Queue[LeanRepl] = asyncio.Queue()
                for repl in repls:
                    queue.put_nowait(repl)
                self._idle[header] = queue
                self._spares[header] = asyncio.ensure_future(self._new_repl(header))
        return self._idle[header]

    async def _replacement(self, header: str) -> LeanRepl:
        """The hot spare (already past the header), and a new spare started in its place."""
        spare_task = self._spares.get(header)
        self._spares[header] = asyncio.ensure_future(self._new_repl(header))
        try:
            return await spare_task
        except Exception:
            return await self._new_repl(header)

    async def check(self, header: str, proof: str, statement: str | None = None,
                    timeout_s: float | None = None, line_offset: int = 0) -> LeanVerdict:
        started = time.monotonic()
        reason = screen(proof, statement)
        if reason:
            return LeanVerdict("rejected", message=reason)
        queue = await self._ensure(header)
        repl = await queue.get()
        timeout_s = timeout_s or self.config.timeout_s
        try:
            response = await repl.send({"cmd": proof, "env": repl.env}, timeout_s)
            verdict = judge(response, line_offset)
            if repl.rss_mb() > self.config.max_rss_mb:
                self.stats["recycled"] += 1
                await repl.kill()
                repl = await self._replacement(header)
        except asyncio.TimeoutError:
            self.stats["timeouts"] += 1
            await repl.kill()
            repl = await self._replacement(header)
            verdict = LeanVerdict("timeout", message=f"Lean did not answer within {timeout_s} s")
        except ReplCrashed as exc:
            self.stats["crashes"] += 1
            await repl.kill()
            repl = await self._replacement(header)
            verdict = LeanVerdict("crashed", message=str(exc))
        finally:
            queue.put_nowait(repl)
        self.stats["checks"] += 1
        verdict.duration_s = round(time.monotonic() - started, 6)
        return verdict

    async def check_file(self, text: str, statement: str | None = None, timeout_s: float | None = None) -> LeanVerdict:
        """A whole file: imports become the pool's header; message lines refer to `text`."""
        header, body, header_lines = split_header(text)
        return await self.check(header, body, statement, timeout_s, line_offset=header_lines)

    async def close(self) -> None:
        for task in self._spares.values():
            try:  # a spare still importing its header is waited for, so no REPL is orphaned
                await (await asyncio.wait_for(task, timeout=self.config.header_timeout_s)).kill()
            except Exception:
                pass
        for queue in self._idle.values():
            while not queue.empty():
                await queue.get_nowait().kill()
        self._idle.clear()
        self._spares.clear()
