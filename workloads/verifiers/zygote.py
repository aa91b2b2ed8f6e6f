"""The sandboxed Python check server ("zygote"). Standard library only.

Started once per pool worker, inside bubblewrap, as `python -I -S zygote.py --uid UID ...`.
It reads one JSON request `{"jobs": [...]}` per line on stdin and answers one line
`{"verdicts": [...]}` on stdout. For each job
it forks a child (cheap: this process is small and already has Python initialised); the child
drops to the unprivileged UID, applies rlimits, and runs the code and then the tests with
stdout and stderr captured into one capped pipe. Afterwards every process the check left in
this PID namespace is killed and /tmp is wiped, so the next check starts clean.

The zygote keeps only CAP_SETUID/SETGID/KILL/FOWNER/DAC_OVERRIDE (bubblewrap drops the
rest), so a check, running as another uid with no capabilities, cannot signal it.
"""

import json
import os
import resource
import select
import shutil
import signal
import sys
import time
import traceback

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


def _apply_limits(limits):
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


def _run_check(job, compiled):
    """Run code then tests in one namespace; return the result record."""
    code, tests = job.get("code", ""), job.get("tests", "")
    compiled_code, compiled_tests = compiled
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}

    def run(compiled, filename, source):
        try:
            exec(compiled, namespace)
        except MemoryError:
            return {"status": "memory_limit", "where": filename.strip("<>"), "message": "MemoryError"}
        except AssertionError as exc:
            location = _failure_location(exc.__traceback__, filename, source.splitlines())
            if filename == "<tests>":
                return {"status": "failed", "failed_test": location, "message": f"AssertionError: {exc}".rstrip(": ")}
            return {"status": "runtime_error", "where": "code", "message": _user_traceback(exc)}
        except SystemExit as exc:
            if exc.code in (None, 0):
                return {"status": "runtime_error", "where": filename.strip("<>"),
                        "message": "SystemExit(0) before the tests finished"}
            return {"status": "runtime_error", "where": filename.strip("<>"), "message": f"SystemExit({exc.code!r})"}
        except BaseException as exc:
            return {"status": "runtime_error", "where": filename.strip("<>"), "message": _user_traceback(exc)}
        return None

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


def _child(job, compiled, uid, out_w, result_w):
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(out_w, 1)
    os.dup2(out_w, 2)
    for fd in (devnull, out_w):
        os.close(fd)
    try:
        os.chdir(WORKDIR)
        _drop_privileges(uid)
        _apply_limits(job["limits"])
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
    while time.monotonic() < deadline:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]
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
        time.sleep(0.002)


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


def run_job(job, uid):
    limits = job["limits"]
    started = time.monotonic()
    compiled = compile_job(job)
    if isinstance(compiled, dict):
        compiled.update(duration_s=round(time.monotonic() - started, 6), output="")
        return compiled
    out_r, out_w = os.pipe()
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(out_r)
        os.close(result_r)
        for fd in (PROTOCOL_IN, PROTOCOL_OUT):
            os.close(fd)
        _child(job, compiled, uid, out_w, result_w)
    os.close(out_w)
    os.close(result_w)

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
    verdict["duration_s"] = round(time.monotonic() - started, 6)
    verdict["output"] = _excerpt(output.decode("utf-8", "replace"))
    return verdict


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
OWN_PID_NAMESPACE = True
WORKDIR = "/tmp"
CHECK_UID = None


def main():
    """zygote.py --uid UID|- --pidns 1|0 --workdir DIR"""
    global PROTOCOL_IN, PROTOCOL_OUT, OWN_PID_NAMESPACE, WORKDIR, CHECK_UID
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
    reader = os.fdopen(PROTOCOL_IN, "rb", buffering=0)
    writer = os.fdopen(PROTOCOL_OUT, "wb", buffering=0)
    # Forked checks share this process's pages copy-on-write: keep the collector from
    # touching (and so copying) them in every child.
    pass
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
            except Exception as exc:
                verdicts.append({"status": "sandbox_error", "message": f"zygote: {exc!r}", "duration_s": 0.0, "output": ""})
        writer.write(json.dumps({"verdicts": verdicts}).encode() + b"\n")


if __name__ == "__main__":
    main()
