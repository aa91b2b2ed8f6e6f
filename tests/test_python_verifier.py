"""The sandboxed Python verifier against hostile input: each case has its exact verdict, and
after each the pool is healthy (the next ordinary check passes, nothing is left running)."""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path

import pytest

from workloads.verifiers.python_sandbox import IsolationUnavailable, Limits, PythonJob, PythonSandboxPool

SHORT = Limits(timeout_s=1.5)
# Uids of this module's pool only: the leftover check counts processes by uid, and other tests'
# pools (the default base, 20000) may be running checks on the other test worker meanwhile.
UID_BASE = 23000
HOST_PORT_HOLDER: dict = {}


@pytest.fixture(scope="module")
def pool(loop):
    sandbox = PythonSandboxPool(num_workers=2, uid_base=UID_BASE, recycle_every=50)
    loop.run_until_complete(sandbox.start())
    yield sandbox
    loop.run_until_complete(sandbox.close())


@pytest.fixture(scope="module")
def host_listener():
    """A real TCP server on the host's loopback: sandboxed code must not reach it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted = []
    server.settimeout(0.2)

    def serve():
        while not HOST_PORT_HOLDER.get("stop"):
            try:
                accepted.append(server.accept())
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    HOST_PORT_HOLDER["stop"] = True
    thread.join()
    server.close()


def run(loop, pool, *jobs):
    return loop.run_until_complete(pool.verify_batch(list(jobs)))


def leftover_check_processes() -> list[int]:
    """Processes running as a check uid (root mode gives each worker its own uid)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                uid = int((entry / "status").read_text().split("Uid:")[1].split()[0])
            except (OSError, IndexError, ValueError):
                continue
            if UID_BASE <= uid < UID_BASE + 64:
                found.append(int(entry.name))
    return found


HOSTILE = {
    "infinite loop": (PythonJob("while True:\n    pass", limits=SHORT), "timeout"),
    "sleep": (PythonJob("import time\ntime.sleep(60)", limits=SHORT), "timeout"),
    "2 GB allocation": (PythonJob("x = bytearray(2 * 1024 ** 3)"), "memory_limit"),
    "fork bomb": (PythonJob("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
                            limits=SHORT), "timeout"),
    "setsid child outlives parent": (PythonJob(
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\n", "assert True"), "passed"),
    "write /etc": (PythonJob("open('/etc/passwd', 'a').write('x')"), "runtime_error"),
    "write the code's directory": (PythonJob("import os\nopen(os.path.join('/opt/rayworks', 'x'), 'w')"), "runtime_error"),
    "write outside /tmp": (PythonJob("open('/usr/lib/evil', 'w')"), "runtime_error"),
    "50 MB file": (PythonJob("open('big', 'wb').write(b'x' * 50 * 1024 * 1024)"), "runtime_error"),
    "endless output": (PythonJob("while True:\n    print('spam' * 100)", limits=SHORT), "output_limit"),
    "closed stdout spin": (PythonJob("import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass", limits=SHORT), "timeout"),
    "read /etc/shadow": (PythonJob("print(open('/etc/shadow').read())"), "runtime_error"),
    "kill the zygote": (PythonJob("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)"), "runtime_error"),
    "kill pid 1": (PythonJob("import os, signal\nos.kill(1, signal.SIGKILL)"), "runtime_error"),
    "os._exit before tests": (PythonJob("import os\nos._exit(0)", "assert False"), "runtime_error"),
    "sys.exit(0) before tests": (PythonJob("import sys\nsys.exit(0)", "assert False"), "runtime_error"),
    "ignores SIGTERM": (PythonJob("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass",
                                  limits=SHORT), "timeout"),
    "deep recursion": (PythonJob("def f(n):\n    return f(n + 1)\nf(0)"), "runtime_error"),
    # C-level recursion past the raised limit overflows the real stack: SIGSEGV
    "stack overflow": (PythonJob("import sys\nsys.setrecursionlimit(10**9)\nx = []\nfor _ in range(10**6):\n    x = [x]\nrepr(x)"),
                       "runtime_error"),
    "segfault": (PythonJob("import ctypes\nctypes.string_at(0)"), "runtime_error"),
    "binary garbage": (PythonJob("\x00\x7fELF\x02\x01\x01 garbage \xff\xfe"), "syntax_error"),
    "empty code": (PythonJob(""), "passed"),
    "syntax error in code": (PythonJob("def f(:\n    pass"), "syntax_error"),
    "syntax error in tests": (PythonJob("x = 1", "assert x ==="), "syntax_error"),
    "ordinary pass": (PythonJob("def add(a, b):\n    return a + b", "assert add(2, 3) == 5"), "passed"),
    "ordinary fail": (PythonJob("def add(a, b):\n    return a - b", "assert add(2, 2) == 0\nassert add(2, 3) == 5"), "failed"),
    "runtime error": (PythonJob("1 / 0"), "runtime_error"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_input_gets_its_exact_verdict_and_the_pool_stays_healthy(loop, pool, name):
    job, expected = HOSTILE[name]
    (verdict,) = run(loop, pool, job)
    assert verdict.status == expected, (name, verdict)
    assert verdict.attempts == 1 or name == "kill the zygote"
    (after,) = run(loop, pool, PythonJob(f"value = {len(name)}", f"assert value == {len(name)}"))
    assert after.status == "passed", after
    if os.geteuid() == 0:
        assert leftover_check_processes() == []


def test_network_is_unreachable_even_to_a_port_on_the_host(loop, pool, host_listener):
    port, accepted = host_listener
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"
    (verdict,) = run(loop, pool, PythonJob(code))
    assert verdict.status == "runtime_error" and "Connection refused" in verdict.message
    assert accepted == []


def test_verdicts_say_which_test_failed_and_capture_output(loop, pool):
    job = PythonJob("print('hello')\ndef sq(x):\n    return x * x", "assert sq(2) == 4\nassert sq(3) == 10, 'nine'")
    (verdict,) = run(loop, pool, job)
    assert verdict.status == "failed"
    assert verdict.failed_test == {"line": 2, "source": "assert sq(3) == 10, 'nine'"}
    assert "nine" in verdict.message and verdict.output == "hello\n"
    check_style = PythonJob("def add(a, b):\n    return a + b",
                            "def check(candidate):\n    assert candidate(1, 1) == 2\n    assert candidate(1, 2) == 4\n",
                            entry_point="add")
    (verdict,) = run(loop, pool, check_style)
    assert verdict.status == "failed" and verdict.failed_test["line"] == 3


def test_identical_samples_are_checked_once_and_cached(loop, pool):
    before = pool.stats["checks"]
    job = PythonJob("import random\nx = 41 + 1", "assert x == 42")
    verdicts = run(loop, pool, *[job] * 8)
    assert [v.status for v in verdicts] == ["passed"] * 8
    assert pool.stats["checks"] == before + 1
    (again,) = run(loop, pool, job)
    assert again.cached and pool.stats["checks"] == before + 1
    (other_limits,) = run(loop, pool, PythonJob(job.code, job.tests, limits=Limits(timeout_s=2.0)))
    assert not other_limits.cached  # limits are part of the key


def test_verify_steps_compares_each_step_with_the_reference_state(loop, pool):
    # c is wrong (7, not 8); d is computed from the true value again, so step 3 verifies after the error
    steps = ["a = 2", "b = a * 3", "c = b + 1", "d = 8 * 2", "e = d +", "g = [d, (1.5, 'x')]"]
    states = [{"a": 2}, {"b": 6}, {"c": 8}, {"d": 16}, {"e": 17}, {"g": [16, (1.5, "x")]}]
    result = loop.run_until_complete(pool.verify_steps(steps, states))
    assert [v.status for v in result.steps] == ["passed", "passed", "failed", "passed", "syntax_error", "passed"]
    assert result.first_failure == 2 and result.verdict.status == "failed"
    assert result.steps[2].failed_test == {"mismatches": {"c": {"expected": "8", "got": "7"}}}
    # a variable that only pretends to be the value is not a value; a type that differs is a mismatch
    hack = "class Same:\n    def __eq__(self, other):\n        return True\nx = Same()"
    result = loop.run_until_complete(pool.verify_steps([hack, "y = (1, 2)", "z = 1"], [{"x": 3}, {"y": [1, 2]}, {"q": 1}]))
    assert [v.status for v in result.steps] == ["failed"] * 3
    assert result.steps[0].failed_test["mismatches"]["x"]["got"] == "not a value"
    assert result.steps[2].failed_test["mismatches"]["q"]["got"] == "absent"
    with pytest.raises(ValueError, match=r"reference_states\[0\]"):
        loop.run_until_complete(pool.verify_steps(["x = 1"], [{"x": object()}]))


def test_zygotes_are_recycled(loop):
    sandbox = PythonSandboxPool(num_workers=1, recycle_every=3)
    try:
        for i in range(7):
            (verdict,) = loop.run_until_complete(sandbox.verify_batch([PythonJob(f"x = {i}", f"assert x == {i}")]))
            assert verdict.passed
        assert sandbox.stats["zygotes_started"] == 3
    finally:
        loop.run_until_complete(sandbox.close())


def test_missing_bubblewrap_refuses_with_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(IsolationUnavailable, match=r"bubblewrap \(bwrap\) is not installed.*rlimits-only"):
        PythonSandboxPool(num_workers=1)


def test_rlimits_only_is_explicit_warns_and_still_limits(loop, caplog):
    sandbox = PythonSandboxPool(num_workers=1, isolation="rlimits-only")
    with caplog.at_level(logging.WARNING):
        loop.run_until_complete(sandbox.start())
    assert "rlimits-only" in caplog.text
    try:
        verdicts = loop.run_until_complete(sandbox.verify_batch([
            PythonJob("x = 1", "assert x == 1"), PythonJob("while True:\n    pass", limits=SHORT),
            PythonJob("x = bytearray(2 * 1024 ** 3)"),
        ]))
        assert [v.status for v in verdicts] == ["passed", "timeout", "memory_limit"]
    finally:
        loop.run_until_complete(sandbox.close())
    with pytest.raises(ValueError, match="isolation"):
        PythonSandboxPool(isolation="none")
