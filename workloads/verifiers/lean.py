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

Verdicts are decided by Lean: a proof passes only when it elaborates with no error, no
`sorries` and no "declaration uses 'sorry'" warning (either quote style); then, when the
expected statement is given, `example : ∀ <its binders>, <its type> := @<name>` elaborates
in the proof's own environment (Lean, not text, decides that the proof proves that
statement); and `#print axioms <name>` lists only the standard axioms (`propext`,
`Classical.choice`, `Quot.sound`: so no `sorryAx`, no `native_decide`'s `Lean.ofReduceBool`,
no axiom smuggled in by a macro). A text pre-screen refuses axioms, `#exit`, commands that
run code (`#eval`, `run_cmd`, new syntax or elaborators, `initialize`) and imports outside the
header before Lean runs; for the statement it is only a fast first filter, never the decision.

Isolation: REPLs run under bubblewrap (no network, own PID namespace, the host read-only, a
private /tmp); the Lake project is read-only, with a private writable overlay where bubblewrap
has `--tmp-overlay` (0.9+). Without bubblewrap the pool refuses to start unless the caller
passes `sandbox=False`, like the Python pool.

Pools: one per import header, at most `max_headers` of them (least recently used evicted).
A REPL whose header does not elaborate in time is killed; a REPL that timed out, crashed or
grew past `max_rss_mb` is killed and never goes back to the queue, and a replacement is
started in the background.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections import OrderedDict
from pathlib import Path

from workloads.verifiers.python_sandbox import require_bubblewrap

MODIFIERS = r"^\s*(@\[[^\]]*\]\s*)?((private|protected|local|scoped|noncomputable|partial|unsafe)\s+)*"
BANNED = [
    (re.compile(MODIFIERS + r"axiom\b", re.M), "declares an axiom"),
    (re.compile(r"#exit\b"), "uses #exit"),
    (re.compile(r"#eval\b"), "runs code (#eval)"),
    (re.compile(r"\bsorryAx\b"), "uses sorryAx"),
    (re.compile(r"\bset_option\s+debug\.skipKernelTC\b"), "disables the kernel check"),
    (re.compile(r"@\[\s*(implemented_by|extern|init)\b"), "replaces code by an external implementation"),
    (re.compile(r"\bunsafe\b"), "uses unsafe definitions"),
    (re.compile(MODIFIERS + r"(elab|macro|syntax|macro_rules|elab_rules|declare_syntax_cat|initialize|builtin_initialize)\b",
                re.M), "defines syntax, elaborators or initialisers"),
    (re.compile(r"\brun_(cmd|tac|elab|meta)\b"), "runs meta code"),
    (re.compile(r"^\s*import\b", re.M), "imports outside the header"),
]
SORRY_WARNING = re.compile(r"declaration uses ['`]sorry['`]")
STANDARD_AXIOMS = ("propext", "Classical.choice", "Quot.sound")
DECLARATION = re.compile(r"^\s*(theorem|lemma)\s+([^\s(\[{:⦃]+)\s*(.*)$", re.S)


class LeanToolchainNotFound(RuntimeError):
    pass


@dataclasses.dataclass
class LeanConfig:
    # The REPL command, run inside `project_dir` (a Lake project that depends on the REPL).
    command: tuple[str, ...] = ("lake", "env", "repl")
    project_dir: str = "."
    repls_per_header: int = 2
    max_headers: int = 4  # pools kept warm, one per import header (least recently used evicted)
    timeout_s: float = 60.0
    header_timeout_s: float = 600.0  # importing Mathlib takes minutes
    max_rss_mb: int = 8192
    sandbox: bool = True  # under bubblewrap; False runs the REPL unsandboxed and must be chosen
    allowed_axioms: tuple[str, ...] = STANDARD_AXIOMS


@dataclasses.dataclass
class LeanVerdict:
    status: str  # passed, failed, rejected, timeout, crashed
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
    """Why `proof` is refused before Lean runs, or None when it may be checked. The statement
    test here is a fast filter only: `statement_check` lets Lean decide."""
    for pattern, reason in BANNED:
        if pattern.search(proof):
            return f"rejected: the proof {reason}"
    if statement is not None and " ".join(statement.split()) not in " ".join(proof.split()):
        return "rejected: the theorem statement was changed"
    return None


def split_statement(statement: str) -> tuple[str, str, str]:
    """(name, binders, type) of `theorem NAME BINDERS : TYPE [:= ...]`, split at the top-level colon."""
    match = DECLARATION.match(statement)
    if not match:
        raise ValueError(f"statement: expected `theorem NAME BINDERS : TYPE`, got {statement[:80]!r}")
    name, rest = match.group(2), match.group(3)
    depth, colon, end = 0, None, len(rest)
    for index, char in enumerate(rest):
        if char in "([{⦃":
            depth += 1
        elif char in ")]}⦄":
            depth -= 1
        elif char == ":" and depth == 0:
            if rest[index + 1 : index + 2] == "=":
                end = index
                break
            if colon is None:
                colon = index
    if colon is None:
        raise ValueError(f"statement: no `: TYPE` in {statement[:80]!r}")
    return name, rest[:colon].strip(), rest[colon + 1 : end].strip()


def statement_check(statement: str) -> tuple[str, str]:
    """(theorem name, the Lean command that elaborates only if that name proves `statement`)."""
    name, binders, type_ = split_statement(statement)
    expected = f"∀ {binders}, {type_}" if binders else type_
    return name, f"example : {expected} := @{name}"


def axioms_used(response: dict) -> list[str] | None:
    """The axioms `#print axioms` listed (None when the answer is not one)."""
    for message in response.get("messages", []):
        text = str(message.get("data", ""))
        if "does not depend on any axioms" in text:
            return []
        found = re.search(r"depends on axioms:\s*\[(.*?)\]", text, re.S)
        if found:
            return [axiom.strip() for axiom in found.group(1).split(",") if axiom.strip()]
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
        """Elaborate the header; a REPL that fails or runs out of time doing so is killed."""
        self.process = await asyncio.create_subprocess_exec(
            *self.command, cwd=self.cwd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True, limit=64 * 1024 * 1024,
        )
        try:
            response = await self.send({"cmd": header} if header.strip() else {"cmd": ""}, timeout_s)
        except asyncio.TimeoutError:
            await self.kill()
            raise ReplCrashed(f"the header did not elaborate within {timeout_s} s") from None
        except BaseException:
            await self.kill()
            raise
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
        except (BrokenPipeError, ConnectionResetError, RuntimeError) as exc:
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

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

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


class _HeaderPool:
    """The REPLs of one import header: `idle` holds live ones; `size` counts live and starting ones.
    A `None` in the queue wakes a waiter after a replacement failed to start."""

    def __init__(self, header: str):
        self.header = header
        self.idle: asyncio.Queue[LeanRepl | None] = asyncio.Queue()
        self.size = 0
        self.evicted = False
        self.tasks: set[asyncio.Task] = set()


def overlay_supported() -> bool:
    """bubblewrap 0.9 added `--overlay-src` / `--tmp-overlay`."""
    try:
        return "--tmp-overlay" in subprocess.run(["bwrap", "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False


def _tmp_entry(path: str) -> str | None:
    """The top-level /tmp entry that holds `path`, which a private /tmp would hide."""
    parts = Path(path).parts
    return str(Path(*parts[:3])) if len(parts) > 2 and parts[1] == "tmp" else None


class LeanReplPool:
    """Warm REPLs per header; `await pool.check(header, proof, statement)`."""

    def __init__(self, config: LeanConfig = LeanConfig(), command: list[str] | None = None):
        self.config = config
        self.command = self._sandboxed(command or find_toolchain(config))
        self._pools: OrderedDict[str, _HeaderPool] = OrderedDict()
        self.stats = {"checks": 0, "crashes": 0, "timeouts": 0, "recycled": 0, "repls_started": 0, "evicted_headers": 0}

    def _sandboxed(self, command: list[str]) -> list[str]:
        if not self.config.sandbox:
            return command
        require_bubblewrap("pass LeanConfig(sandbox=False) to run the REPL unsandboxed (it can then reach the network "
                           "and write what this user can)")
        project = str(Path(self.config.project_dir).resolve())
        # The host read-only, a private /tmp, no network. What the private /tmp would hide is bound back
        # read-only: the top-level /tmp entry of every path the command uses (a virtualenv's whole tree).
        binds = ["--ro-bind", "/", "/", "--tmpfs", "/tmp", "--dev", "/dev", "--proc", "/proc"]
        paths = [arg for arg in command if os.path.isabs(arg)] + [str(Path(arg).resolve()) for arg in command
                                                                    if os.path.isabs(arg)] + [project]
        for entry in dict.fromkeys(filter(None, map(_tmp_entry, paths))):
            if os.path.exists(entry):
                binds += ["--ro-bind", entry, entry]
        # The project read-only: a proof cannot change files later verdicts depend on. Build outputs go
        # to a private overlay where bubblewrap can make one.
        binds += ["--overlay-src", project, "--tmp-overlay", project] if overlay_supported() else ["--ro-bind", project, project]
        return ["bwrap", "--die-with-parent", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--new-session",
                *binds, "--chdir", project, "--", *command]

    async def _start(self, pool: _HeaderPool) -> LeanRepl:
        self.stats["repls_started"] += 1
        try:
            return await LeanRepl(self.command, self.config.project_dir).start(pool.header, self.config.header_timeout_s)
        except BaseException:
            pool.size -= 1
            raise

    def _replace_in_background(self, pool: _HeaderPool) -> None:
        pool.size += 1

        async def replace():
            try:
                repl = await self._start(pool)
            except Exception:
                pool.idle.put_nowait(None)  # wake a waiter: it starts one itself and sees why it fails
                return
            await self._release(pool, repl, healthy=True)

        task = asyncio.ensure_future(replace())
        pool.tasks.add(task)
        task.add_done_callback(pool.tasks.discard)

    def _pool_for(self, header: str) -> _HeaderPool:
        if header in self._pools:
            self._pools.move_to_end(header)
            return self._pools[header]
        pool = self._pools[header] = _HeaderPool(header)
        while len(self._pools) > self.config.max_headers:
            _, old = self._pools.popitem(last=False)
            old.evicted = True
            self.stats["evicted_headers"] += 1
            while not old.idle.empty():
                repl = old.idle.get_nowait()
                if repl is not None:
                    asyncio.ensure_future(repl.kill())
        return pool

    async def _acquire(self, pool: _HeaderPool) -> LeanRepl:
        while True:
            if not pool.idle.empty() or pool.size >= self.config.repls_per_header:
                repl = await pool.idle.get()
                if repl is not None and repl.alive:
                    return repl
                if repl is not None:
                    pool.size -= 1
                continue
            pool.size += 1
            return await self._start(pool)

    async def _release(self, pool: _HeaderPool, repl: LeanRepl, healthy: bool) -> None:
        """Back to the queue only if alive, healthy and its header still pooled; else killed and counted out."""
        if healthy and repl.alive and not pool.evicted:
            pool.idle.put_nowait(repl)
            return
        await repl.kill()
        pool.size -= 1

    async def check(self, header: str, proof: str, statement: str | None = None,
                    timeout_s: float | None = None, line_offset: int = 0) -> LeanVerdict:
        started = time.monotonic()
        reason = screen(proof, statement)
        check_command = None
        if reason is None and statement is not None:
            try:
                check_command = statement_check(statement)
            except ValueError as exc:
                reason = f"rejected: {exc}"
        if reason:
            return LeanVerdict("rejected", message=reason)
        pool = self._pool_for(header)
        try:
            repl = await self._acquire(pool)
        except (ReplCrashed, OSError) as exc:
            return LeanVerdict("crashed", message=f"no REPL for this header: {exc}")
        timeout_s = timeout_s or self.config.timeout_s
        healthy = False
        try:
            response = await repl.send({"cmd": proof, "env": repl.env}, timeout_s)
            verdict = judge(response, line_offset)
            if verdict.passed and check_command is not None:
                verdict = await self._decide_statement(repl, response["env"], check_command, timeout_s)
            healthy = repl.rss_mb() <= self.config.max_rss_mb
            self.stats["recycled"] += not healthy
        except asyncio.TimeoutError:
            self.stats["timeouts"] += 1
            verdict = LeanVerdict("timeout", message=f"Lean did not answer within {timeout_s} s")
        except ReplCrashed as exc:
            self.stats["crashes"] += 1
            verdict = LeanVerdict("crashed", message=str(exc))
        finally:
            await self._release(pool, repl, healthy)
            if not healthy and not pool.evicted:
                self._replace_in_background(pool)
        self.stats["checks"] += 1
        verdict.duration_s = round(time.monotonic() - started, 6)
        return verdict

    async def _decide_statement(self, repl: LeanRepl, env: int, check_command: tuple[str, str], timeout_s: float) -> LeanVerdict:
        """Lean decides: the expected statement elaborates against the proof's theorem, whose
        axioms are only the allowed ones."""
        name, command = check_command
        response = await repl.send({"cmd": command, "env": env}, timeout_s)
        if judge(response).status != "passed":
            detail = judge(response).message
            return LeanVerdict("failed", response.get("messages", []), message=f"the proof does not prove the expected "
                               f"statement of {name}: {detail}"[:2000])
        axioms = axioms_used(await repl.send({"cmd": f"#print axioms {name}", "env": env}, timeout_s))
        if axioms is None:
            return LeanVerdict("failed", message=f"could not list the axioms {name} uses")
        extra = [axiom for axiom in axioms if axiom not in self.config.allowed_axioms]
        if extra:
            return LeanVerdict("failed", message=f"{name} depends on axioms outside the allowed ones: {', '.join(extra)}")
        return LeanVerdict("passed")

    async def check_file(self, text: str, statement: str | None = None, timeout_s: float | None = None) -> LeanVerdict:
        """A whole file: imports become the pool's header; message lines refer to `text`."""
        header, body, header_lines = split_header(text)
        return await self.check(header, body, statement, timeout_s, line_offset=header_lines)

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.evicted = True
            for task in list(pool.tasks):  # a REPL still importing its header is waited for, not orphaned
                try:
                    await asyncio.wait_for(task, timeout=self.config.header_timeout_s)
                except Exception:
                    pass
            while not pool.idle.empty():
                repl = pool.idle.get_nowait()
                if repl is not None:
                    await repl.kill()
        self._pools.clear()
