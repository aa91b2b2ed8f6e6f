"""The sandboxed Python check server ("zygote"). Standard library only (plus inert.py beside it).

Started once per pool worker, inside bubblewrap, as `python -I -S zygote.py --uid UID ...`.
It reads one JSON request `{"jobs": [...]}` per line on stdin and answers one line
`{"verdicts": [...]}` on stdout. Two modes per job:

- `isolated` (the default): the verdict comes from this process, which never runs the
  candidate's code. A *spawner*, forked when the zygote starts and before any job (so its
  memory never holds a test), forks the candidate's process: its own uid, rlimits, and only
  two pipes to the zygote, a command pipe in and a reply pipe out (plus its output). The
  zygote runs the trusted tests itself (under an alarm at the check's deadline); every name
  the tests use that the candidate defines becomes a proxy that calls the candidate over the
  pipes, with arguments and results in the inert encoding of inert.py. Only the zygote holds
  the verdict channel. A result that is not a builtin value (an object with its own `__eq__`)
  is `invalid_result`; a candidate that exits, is killed or breaks the protocol is a
  `runtime_error`. Step jobs run the candidate's program step by step and compare its
  variables after each step with reference states the zygote holds.
- `in_process` (forgeable): code and tests in one forked child that also writes the verdict,
  as a plain `exec` harness does. Only for tests that need objects that cannot cross a pipe.

Each check's processes are killed afterwards (everything but init, the zygote and the spawner
in this PID namespace) and /tmp is wiped, so the next check starts clean.

The zygote keeps only CAP_SETUID/SETGID/KILL/FOWNER/DAC_OVERRIDE (bubblewrap drops the
rest); checks run as another uid with no capabilities, so they cannot signal the zygote or
the spawner, and both are non-dumpable (no ptrace, no /proc/PID/mem or fd access by a
same-uid process when the sandbox has no root).
"""

import builtins
import contextlib
import gc
import io
import json
import os
import resource
import select
import shutil
import signal
import socket
import sys
import time
import traceback
from types import CodeType

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I leaves the script's directory out
from inert import NotAValue, decode, encode  # noqa: E402

EXCERPT_CHARS = 2000
RESULT_CAP = 1 << 20


def _excerpt(text):
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS // 2] + "\n...\n" + text[-EXCERPT_CHARS // 2 :]


# ---------------------------------------------------------------- the check (child side)
def _drop_privileges(uid):
    if uid is None or os.getuid() != 0:
        return
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def _apply_limits(limits, processes=True):
    cpu = max(1, int(limits["timeout_s"]) + 1)
    memory = int(limits["memory_mb"]) * 1024 * 1024
    for which, value in (
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_AS, memory),
        (resource.RLIMIT_FSIZE, int(limits["file_size_mb"]) * 1024 * 1024),
        (resource.RLIMIT_NOFILE, int(limits["open_files"])),
        (resource.RLIMIT_NPROC, int(limits["processes"])),
        (resource.RLIMIT_CORE, 0),
    ):
        if which == resource.RLIMIT_NPROC and not processes:
            continue  # the judge forks nothing; its uid is not the candidate's
        resource.setrlimit(which, (value, value))


def _user_traceback(exc):
    """The traceback without the zygote's own frames: what the code and tests did."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename in ("<code>", "<tests>")]
    lines = traceback.format_list(frames) + traceback.format_exception_only(type(exc), exc)
    return _excerpt("Traceback (most recent call last):\n" + "".join(lines) if frames else "".join(lines))


def _failure_location(tb, filename, source_lines):
    """The innermost line of `filename` in a traceback, with its source text."""
    line = None
    for frame in traceback.extract_tb(tb):
        if frame.filename == filename:
            line = frame.lineno
    if line is None:
        return None
    text = source_lines[line - 1].strip() if 0 < line <= len(source_lines) else ""
    return {"line": line, "source": text}


def compile_job(job):
    """(code object, tests object), or a syntax_error record.

    Compiling runs nothing, so the zygote does it before forking: a syntax error costs no
    fork, and the child does not pay (in copy-on-write page faults) for the parser's memory."""
    compiled = []
    for where in ("code", "tests"):
        try:
            compiled.append(compile(job.get(where) or "", f"<{where}>", "exec"))
        except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
            return {"status": "syntax_error", "where": where, "message": f"{type(exc).__name__}: {exc}"}
    return tuple(compiled)


def _execute(compiled, filename, source, namespace):
    """exec one compiled part; None, or the failure record (a failing assert in the tests is
    named by its line there)."""
    where = filename.strip("<>")
    try:
        exec(compiled, namespace)
    except (CandidateFailure, JudgeTimeout):  # the judge's own verdicts, decided above the tests
        raise
    except MemoryError:
        return {"status": "memory_limit", "where": where, "message": "MemoryError"}
    except AssertionError as exc:
        location = _failure_location(exc.__traceback__, filename, source.splitlines())
        if filename == "<tests>":
            return {"status": "failed", "failed_test": location, "message": f"AssertionError: {exc}".rstrip(": ")}
        return {"status": "runtime_error", "where": "code", "message": _user_traceback(exc)}
    except SystemExit as exc:
        if exc.code in (None, 0):
            return {"status": "runtime_error", "where": where, "message": "SystemExit(0) before the tests finished"}
        return {"status": "runtime_error", "where": where, "message": f"SystemExit({exc.code!r})"}
    except BaseException as exc:
        return {"status": "runtime_error", "where": where, "message": _user_traceback(exc)}
    return None


def _run_check(job, compiled):
    """In-process mode: code then tests in one namespace (forgeable: the code can reach the verdict)."""
    code, tests = job.get("code", ""), job.get("tests", "")
    compiled_code, compiled_tests = compiled
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}

    def run(compiled, filename, source):
        return _execute(compiled, filename, source, namespace)

    failure = run(compiled_code, "<code>", code)
    if failure:
        return failure
    # A failing assert is named by its line in the tests.
    failure = run(compiled_tests, "<tests>", tests)
    if failure:
        return failure
    entry_point = job.get("entry_point")
    if entry_point:
        if "check" not in namespace or entry_point not in namespace:
            missing = "check" if "check" not in namespace else entry_point
            return {"status": "failed", "message": f"{missing!r} is not defined"}
        call = compile(f"check({entry_point})", "<tests>", "exec")
        failure = run(call, "<tests>", tests)
        if failure:
            return failure
    return {"status": "passed"}


def _enter_check(out_w, uid, limits):
    """A check's process: its own session, stdin from /dev/null, stdout and stderr into the
    capture pipe, the work dir, the check's uid and rlimits."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(out_w, 1)
    os.dup2(out_w, 2)
    for fd in (devnull, out_w):
        os.close(fd)
    os.chdir(WORKDIR)
    _drop_privileges(uid)
    _apply_limits(limits)


def _child(job, compiled, uid, out_w, result_w):
    try:
        _enter_check(out_w, uid, job["limits"])
    except Exception as exc:  # the sandbox itself failed: never the sample's fault
        record = {"status": "sandbox_error", "message": f"setup: {exc!r}"}
    else:
        # sys.stdout/stderr already write to fds 1 and 2, now the capture pipe: new file
        # objects here would cost a fifth of a trivial check.
        try:
            record = _run_check(job, compiled)
        except MemoryError:
            record = {"status": "memory_limit", "message": "MemoryError"}
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
    try:
        os.write(result_w, json.dumps(record).encode()[:RESULT_CAP])
    except Exception:
        pass
    os._exit(0)


# ---------------------------------------------------------------- isolated mode: the candidate
REPLY_CAP = 16 * 1024 * 1024
MESSAGE_CHARS = 2000


def _exception_reply(exc, filename):
    """["raised", type name, message, is MemoryError] for an exception in candidate code."""
    if isinstance(exc, SystemExit):
        code = "0" if exc.code in (None, 0) else repr(exc.code)
        return ["raised", "SystemExit", f"SystemExit({code})", False]
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    detail = "".join(traceback.format_list(frames) + traceback.format_exception_only(type(exc), exc))
    return ["raised", type(exc).__name__, _excerpt(str(exc))[:MESSAGE_CHARS], isinstance(exc, MemoryError), _excerpt(detail)]


def _describe(namespace, name):
    if name not in namespace:
        return ["absent"]
    value = namespace[name]
    try:
        return ["value", encode(value)]
    except NotAValue:
        return ["callable"] if callable(value) else ["other", type(value).__name__]


def _serve_candidate(reader, writer):
    """Answer the judge's commands: run source, describe names, call functions."""
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    while True:
        line = reader.readline()
        if not line:
            return
        op, *fields = json.loads(line)
        try:
            if op == "run":  # ["run", source, filename, names to describe afterwards]
                exec(compile(fields[0], fields[1], "exec"), namespace)
                reply = ["names", {name: _describe(namespace, name) for name in fields[2]}]
            elif op == "call":
                function = namespace.get(fields[0])
                args, kwargs = decode(fields[1]), decode(fields[2])
                result = function(*args, **kwargs)
                try:
                    reply = ["ok", encode(result)]
                except NotAValue as exc:
                    reply = ["invalid", str(exc)]
            else:
                reply = ["broken", f"unknown command {op!r}"]
        except BaseException as exc:  # the candidate's own failures, SystemExit included, go to the judge
            reply = _exception_reply(exc, fields[1] if op == "run" else "<code>")
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        writer.write(json.dumps(reply).encode() + b"\n")
        writer.flush()


def _candidate(fds, limits, uid):
    """The candidate's process: forked by the spawner, it never saw a test."""
    command_r, reply_w, out_w = fds
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    writer = os.fdopen(reply_w, "wb")
    try:
        _enter_check(out_w, uid, limits)
    except Exception as exc:
        writer.write(json.dumps(["setup_failed", repr(exc)]).encode() + b"\n")
        writer.flush()
        os._exit(0)
    try:
        _serve_candidate(os.fdopen(command_r, "rb"), writer)
    except BaseException:
        pass
    os._exit(0)


def _spawner(sock):
    """Forks candidates on request: fds [command_r, reply_w, out_w] + {"limits", "uid"}."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps candidates
    for fd in (PROTOCOL_IN, PROTOCOL_OUT):
        os.close(fd)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, 65536, 3)
        except OSError:
            os._exit(0)
        if not message:
            os._exit(0)
        request = json.loads(message)
        pid = os.fork()
        if pid == 0:
            sock.close()
            _candidate(fds, request["limits"], request["uid"])
        for fd in fds:
            os.close(fd)
        sock.sendall(f"{pid}\n".encode())


# ---------------------------------------------------------------- isolated mode: the judge
class CandidateFailure(BaseException):
    """Ends the tests: the candidate did something the judge turns into its own verdict.
    A BaseException, and remembered by the proxy, so a test's `except Exception` cannot hide it."""

    def __init__(self, status, message):
        super().__init__(message)
        self.record = {"status": status, "message": message}


class CandidateError(Exception):
    """An exception the candidate raised whose type is not a builtin exception."""


def _candidate_exception(reply):
    name, message = str(reply[1]), str(reply[2])
    kind = getattr(builtins, name, None)
    exception = CandidateError(f"{name}: {message}")
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            exception = kind(message)
        except Exception:
            pass
    if len(reply) > 4 and reply[4]:
        exception.add_note(f"(raised in the candidate)\n{str(reply[4]).rstrip()}")
    return exception


class JudgeTimeout(BaseException):
    """The check's wall-clock deadline passed while the judge waited or ran the tests."""


def _on_alarm(signum, frame):
    raise JudgeTimeout()


class Candidate:
    """The judge's side of the pipes to the candidate's process. Every wait also drains the
    candidate's output (so it never blocks on a full pipe) and ends at the check's deadline."""

    def __init__(self, command_w, reply_r, out_r, deadline, output_cap):
        self.command_w, self.reply_r, self.out_r = command_w, reply_r, out_r
        self.deadline, self.output_cap = deadline, output_cap
        self.output, self.replies = bytearray(), bytearray()
        self.open = {reply_r, out_r}
        self.failure = None
        os.set_blocking(command_w, False)

    def fail(self, status, message):
        self.failure = self.failure or CandidateFailure(status, message)
        raise self.failure

    def _pump(self, writing=None):
        """Wait once for the candidate (its reply, its output, room in the command pipe)."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise JudgeTimeout()
        readable, writable, _ = select.select(list(self.open), [writing] if writing is not None else [], [], remaining)
        for fd in readable:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                self.open.discard(fd)
            elif fd == self.out_r:
                self.output += chunk
                if len(self.output) > self.output_cap:
                    self.fail("output_limit", f"output exceeded {self.output_cap} bytes")
            else:
                self.replies += chunk
                if len(self.replies) > REPLY_CAP:
                    self.fail("runtime_error", f"the candidate's reply exceeded {REPLY_CAP} bytes")
        return writable

    def drain(self):
        """What output is left once the check is over (never waits)."""
        while self.out_r in self.open and select.select([self.out_r], [], [], 0)[0]:
            chunk = os.read(self.out_r, 1 << 20)
            if not chunk:
                break
            self.output += chunk[: max(0, self.output_cap + 1 - len(self.output))]

    def ask(self, message):
        data = memoryview(json.dumps(message).encode() + b"\n")
        while data:  # write first, wait only when the pipe is full
            if self.reply_r not in self.open:
                self.fail("runtime_error", "the candidate's process ended (it exited or was killed)")
            try:
                data = data[os.write(self.command_w, data):]
            except BlockingIOError:
                self._pump(writing=self.command_w)
            except OSError:
                self.fail("runtime_error", "the candidate's process ended (it exited or was killed)")
        while b"\n" not in self.replies:
            if self.reply_r not in self.open:
                self.fail("runtime_error", "the candidate's process ended (it exited or was killed)")
            self._pump()
        line, _, rest = bytes(self.replies).partition(b"\n")
        self.replies = bytearray(rest)
        try:
            reply = json.loads(line)
            if type(reply) is not list or not reply or type(reply[0]) is not str:
                raise ValueError
        except ValueError:
            self.fail("runtime_error", "the candidate wrote something that is not a reply on its channel")
        if reply[0] == "setup_failed":
            self.fail("sandbox_error", f"candidate setup: {reply[1]}"[:MESSAGE_CHARS])
        return reply

    def value(self, data):
        try:
            return decode(data)
        except (ValueError, TypeError, OverflowError, RecursionError):
            self.fail("runtime_error", "the candidate sent a malformed value")

    def call(self, name, args, kwargs):
        try:
            message = ["call", name, encode(list(args)), encode(kwargs)]
        except NotAValue as exc:
            self.fail("invalid_request", f"the tests pass {exc.args[0].split(' is ')[0]} to {name}(), which cannot cross "
                      "to the isolated candidate: judge this job with mode='in_process'")
        reply = self.ask(message)
        if reply[0] == "ok" and len(reply) == 2:
            return self.value(reply[1])
        if reply[0] == "raised" and len(reply) >= 3:
            if reply[1] == "MemoryError":
                self.fail("memory_limit", "MemoryError in the candidate")
            raise _candidate_exception(reply)
        if reply[0] == "invalid":
            self.fail("invalid_result", f"{name}() returned something that is not a builtin value: {str(reply[1])[:200]}")
        self.fail("runtime_error", "the candidate wrote something that is not a reply on its channel")

    def proxy(self, name):
        def call(*args, **kwargs):
            return self.call(name, args, kwargs)

        call.__name__ = call.__qualname__ = name
        return call


def _global_names(code):
    """Every name a code object (and the functions inside it) may look up."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, CodeType):
            names |= _global_names(constant)
    return names


BUILTIN_NAMES = frozenset(dir(builtins))


def _code_failure(reply):
    """The record for candidate code that raised while it was run."""
    if reply[1] == "MemoryError":
        return {"status": "memory_limit", "where": "code", "message": "MemoryError"}
    message = reply[2] if reply[1] == "SystemExit" else (reply[4] if len(reply) > 4 else f"{reply[1]}: {reply[2]}")
    if reply[2] == "SystemExit(0)":
        message = "SystemExit(0) before the tests finished"
    return {"status": "runtime_error", "where": "code", "message": _excerpt(str(message))}


def _judge_functions(job, compiled_tests, candidate):
    """Run the candidate's program, then the trusted tests against proxies of its names."""
    tests = job.get("tests") or ""
    wanted = (_global_names(compiled_tests) - BUILTIN_NAMES) | ({job["entry_point"]} if job.get("entry_point") else set())
    described = candidate.ask(["run", job.get("code") or "", "<code>", sorted(wanted)])
    if described[0] == "raised":
        return _code_failure(described)
    names = described[1] if described[0] == "names" and len(described) == 2 and isinstance(described[1], dict) else {}
    # The tests run in the zygote: their own copy of the builtins, so nothing they rebind outlives the check.
    namespace = {"__name__": "__main__", "__builtins__": dict(builtins.__dict__)}
    for name, kind in names.items():
        # Builtins are never taken from the candidate: `abs = lambda x: 0` must not reach the tests.
        if name in BUILTIN_NAMES or not isinstance(kind, list) or not kind:
            continue
        if kind[0] == "callable":
            namespace[name] = candidate.proxy(name)
        elif kind[0] == "value" and len(kind) == 2:
            namespace[name] = candidate.value(kind[1])
    proxies_of_candidate = dict(namespace)
    failure = _execute(compiled_tests, "<tests>", tests, namespace)
    if failure:
        return failure
    entry_point = job.get("entry_point")
    if entry_point:
        if "check" not in namespace:
            return {"status": "failed", "message": "'check' is not defined"}
        if entry_point not in proxies_of_candidate:
            return {"status": "failed", "message": f"{entry_point!r} is not defined"}
        namespace["__candidate__"] = proxies_of_candidate[entry_point]
        failure = _execute(compile("check(__candidate__)", "<tests>", "exec"), "<tests>", tests, namespace)
        if failure:
            return failure
    return {"status": "passed"}


def _same(got, expected):
    return got == expected or (got != got and expected != expected)  # nan equals nan here


def _judge_steps(job, candidate):
    """Run the program step by step; after each step compare the named variables with the
    reference state the judge holds. A later step can verify after an earlier one failed."""
    steps, states = job["steps"], [decode(state) for state in job["reference_states"]]
    records, lost = [], None
    for index, (step, expected) in enumerate(zip(steps, states)):
        if lost:
            records.append({"status": "runtime_error", "message": lost})
            continue
        try:
            described = candidate.ask(["run", step, f"<step {index}>", sorted(expected)])
            if described[0] == "raised":
                status = "syntax_error" if described[1] in ("SyntaxError", "IndentationError", "TabError") else "runtime_error"
                records.append({"status": status, "message": f"{described[1]}: {described[2]}"[:MESSAGE_CHARS]})
                continue
            names = described[1] if described[0] == "names" and len(described) == 2 and isinstance(described[1], dict) else {}
        except CandidateFailure as exc:
            lost = exc.record["message"]
            records.append({"status": exc.record["status"], "message": lost})
            continue
        mismatches = {}
        for name, want in expected.items():
            kind = names.get(name)
            if not isinstance(kind, list) or not kind or kind[0] != "value" or len(kind) != 2:
                mismatches[name] = {"expected": repr(want)[:200], "got": "absent" if kind == ["absent"] else "not a value"}
                continue
            got = candidate.value(kind[1])
            if not _same(got, want):
                mismatches[name] = {"expected": repr(want)[:200], "got": repr(got)[:200]}
        records.append({"status": "failed", "mismatches": mismatches} if mismatches else {"status": "passed"})
    first = next((i for i, r in enumerate(records) if r["status"] != "passed"), None)
    return {"status": "passed" if first is None else "failed", "steps": records, "first_failure": first}


def _judge(job, compiled, candidate):
    """Judge in this (trusted) process: the tests never leave it, and the candidate only ever
    sees the calls made to it. The alarm ends tests that outrun the check's deadline."""
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(candidate.deadline - time.monotonic(), 0.001))
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            if job.get("steps") is not None:
                record = _judge_steps(job, candidate)
            else:
                record = _judge_functions(job, compiled[1], candidate)
    except CandidateFailure as exc:
        record = exc.record
    except JudgeTimeout:
        record = {"status": "timeout", "message": f"wall-clock limit of {job['limits']['timeout_s']} s exceeded"}
    except MemoryError:
        record = {"status": "memory_limit", "message": "MemoryError in the tests"}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if candidate.failure is not None and record.get("status") in ("passed", "failed"):
        record = candidate.failure.record  # the tests swallowed it; the verdict does not
    return record, printed.getvalue()


def _make_undumpable():
    """PR_SET_DUMPABLE 0: a same-uid process can then not ptrace us or open /proc/PID/{mem,fd}."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)
    except Exception:
        pass


# ---------------------------------------------------------------- the zygote (parent side)
def _session_of(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return int(fields[4])  # field 6 of /proc/PID/stat: the session id
    except (OSError, IndexError, ValueError):
        return None


def _uid_of(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return None


def _kill_everything_else(check_pid):
    """SIGKILL what the check left behind.

    In our own PID namespace that is every process but init (1) and the zygote. Without one
    (rlimits-only) it is every process of the check's own uid, or, when checks share our uid,
    the check's session (which a `setsid` grandchild escapes: that mode is weaker)."""
    me = os.getpid()
    deadline = time.monotonic() + 2.0  # by time, not rounds: on a loaded machine a fork bomb outlives 50 quick rounds
    pause = 0.0002
    while time.monotonic() < deadline:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me, SPAWNER_PID)]
        if OWN_PID_NAMESPACE:
            victims = pids
        elif CHECK_UID is not None:
            victims = [p for p in pids if _uid_of(p) == CHECK_UID]
        else:
            victims = [p for p in pids if _session_of(p) == check_pid]
        if not victims:
            return
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _reap()
        time.sleep(pause)
        pause = min(pause * 2, 0.01)


def _reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _wipe_tmp():
    for entry in os.scandir(WORKDIR):
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:
            pass


def _start_in_process(job, compiled, uid):
    """Fork the in-process check: (its pid, output pipe, result pipe)."""
    out_r, out_w = os.pipe()
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(out_r)
        os.close(result_r)
        for fd in (PROTOCOL_IN, PROTOCOL_OUT, SPAWNER.fileno()):
            os.close(fd)
        _child(job, compiled, uid, out_w, result_w)
    os.close(out_w)
    os.close(result_w)
    return pid, out_r, result_r


def _spawn_candidate(limits, uid):
    """Ask the spawner for a candidate process: (pid, command pipe, reply pipe, output pipe)."""
    command_r, command_w = os.pipe()
    reply_r, reply_w = os.pipe()
    out_r, out_w = os.pipe()
    socket.send_fds(SPAWNER, [json.dumps({"limits": limits, "uid": uid}).encode()], [command_r, reply_w, out_w])
    for fd in (command_r, reply_w, out_w):
        os.close(fd)
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = SPAWNER.recv(64)
        if not chunk:
            raise ConnectionError("the spawner is gone")
        answer += chunk
    return int(answer), command_w, reply_r, out_r


def _run_isolated(job, compiled, uid, started):
    limits = job["limits"]
    pid, command_w, reply_r, out_r = _spawn_candidate(limits, uid)
    try:
        exited = os.pidfd_open(pid)
    except OSError:
        exited = None
    candidate = Candidate(command_w, reply_r, out_r, started + float(limits["timeout_s"]), int(limits["output_bytes"]))
    try:
        record, printed = _judge(job, compiled, candidate)
    finally:
        os.close(command_w)  # the candidate reads EOF and exits
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if exited is not None:  # not our child: its exit is seen through a pidfd
            select.select([exited], [], [], 2.0)
            os.close(exited)
        candidate.drain()
        for fd in (reply_r, out_r):
            os.close(fd)
        _kill_everything_else(pid)
        _wipe_tmp()
    output = bytes(candidate.output).decode("utf-8", "replace") + printed
    return record, output


def run_job(job, uid):
    started = time.monotonic()
    compiled = compile_job(job)
    if isinstance(compiled, dict):
        compiled.update(duration_s=round(time.monotonic() - started, 6), output="")
        return compiled
    if job.get("mode") == "in_process":
        verdict, output = _run_in_process(job, compiled, uid, started)
    else:
        verdict, output = _run_isolated(job, compiled, uid, started)
    verdict["duration_s"] = round(time.monotonic() - started, 6)
    verdict["output"] = _excerpt(output)
    return verdict


def _run_in_process(job, compiled, uid, started):
    limits = job["limits"]
    pid, out_r, result_r = _start_in_process(job, compiled, uid)
    deadline = started + float(limits["timeout_s"])
    output, result, pipes = bytearray(), bytearray(), {out_r, result_r}
    exit_fd = os.pidfd_open(pid)  # readable once the check's process has exited
    verdict, status_code = None, None
    while pipes or status_code is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            verdict = {"status": "timeout", "message": f"wall-clock limit of {limits['timeout_s']} s exceeded"}
            break
        watched = list(pipes) + ([exit_fd] if status_code is None else [])
        # Once the check has exited, pipes that stay open belong to processes it left
        # behind (a setsid child): drain briefly, then stop waiting for them.
        ready, _, _ = select.select(watched, [], [], remaining if status_code is None else min(remaining, 0.01))
        if not ready and status_code is not None:
            break
        for fd in ready:
            if fd == exit_fd:
                _, status_code = os.waitpid(pid, 0)
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                pipes.discard(fd)
            elif fd == out_r:
                output += chunk
                if len(output) > limits["output_bytes"]:
                    verdict = {"status": "output_limit", "message": f"output exceeded {limits['output_bytes']} bytes"}
            else:
                result += chunk[: max(0, RESULT_CAP - len(result))]
        if verdict is not None:
            break
    for fd in (out_r, result_r, exit_fd):
        os.close(fd)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if status_code is None:
        try:
            _, status_code = os.waitpid(pid, 0)
        except ChildProcessError:
            status_code = 0
    _kill_everything_else(pid)
    _wipe_tmp()
    if verdict is None:
        verdict = _verdict_from_exit(result, status_code, limits)
    return verdict, output.decode("utf-8", "replace")


def _verdict_from_exit(result, status_code, limits):
    if result:
        try:
            return json.loads(result.decode("utf-8", "replace"))
        except ValueError:
            return {"status": "runtime_error", "message": "the check corrupted its result channel"}
    if os.WIFSIGNALED(status_code):
        sig = os.WTERMSIG(status_code)
        if sig == signal.SIGXCPU:
            return {"status": "timeout", "message": f"CPU limit of {int(limits['timeout_s']) + 1} s exceeded"}
        if sig == signal.SIGXFSZ:
            return {"status": "runtime_error", "message": f"file size limit of {limits['file_size_mb']} MB exceeded"}
        return {"status": "runtime_error", "message": f"killed by signal {signal.Signals(sig).name}"}
    code = os.WEXITSTATUS(status_code) if os.WIFEXITED(status_code) else -1
    return {"status": "runtime_error", "message": f"process exited with code {code} before the tests finished"}


PROTOCOL_IN, PROTOCOL_OUT = 0, 1
SPAWNER, SPAWNER_PID = None, None
OWN_PID_NAMESPACE = True
WORKDIR = "/tmp"
CHECK_UID = None


def main():
    """zygote.py --uid UID|- --pidns 1|0 --workdir DIR"""
    global PROTOCOL_IN, PROTOCOL_OUT, OWN_PID_NAMESPACE, WORKDIR, CHECK_UID, SPAWNER, SPAWNER_PID
    options = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    uid = None if options.get("--uid", "-") == "-" else int(options["--uid"])
    CHECK_UID = uid if os.getuid() == 0 else None
    OWN_PID_NAMESPACE = options.get("--pidns", "1") == "1"
    WORKDIR = options.get("--workdir", "/tmp")
    # Protocol channels move to high fds so checks' stdout/stderr cannot reach them.
    PROTOCOL_IN, PROTOCOL_OUT = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if os.getuid() != 0:  # as root here, checks run as another uid and cannot reach us anyway
        _make_undumpable()
    # Forked checks share this process's pages copy-on-write: frozen objects are never scanned
    # by a child's collector, so the child does not copy the pages they live on.
    gc.freeze()
    # The spawner is forked now, before any job is read: candidates it forks hold no test.
    SPAWNER, spawner_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    SPAWNER_PID = os.fork()
    if SPAWNER_PID == 0:
        SPAWNER.close()
        _spawner(spawner_end)
    spawner_end.close()
    reader = os.fdopen(PROTOCOL_IN, "rb", buffering=0)
    writer = os.fdopen(PROTOCOL_OUT, "wb", buffering=0)
    writer.write(b'{"ready": true}\n')
    buffer = b""
    while True:
        while b"\n" not in buffer:
            chunk = reader.read(1 << 20)
            if not chunk:
                return
            buffer += chunk
        line, buffer = buffer.split(b"\n", 1)
        verdicts = []
        for job in json.loads(line)["jobs"]:  # a request carries several jobs: fewer round trips
            try:
                verdicts.append(run_job(job, uid))
            except (ConnectionError, BrokenPipeError):
                os._exit(70)  # the spawner is gone: the pool replaces this zygote and retries
            except Exception as exc:
                verdicts.append({"status": "sandbox_error", "message": f"zygote: {exc!r}", "duration_s": 0.0, "output": ""})
        writer.write(json.dumps({"verdicts": verdicts}).encode() + b"\n")


if __name__ == "__main__":
    main()
