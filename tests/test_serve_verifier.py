"""`rayworks serve verifier` in a fresh process, over real HTTP: verdicts, limits, the reward-hack
suite, fuzzed bodies on every route, 32 clients."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from serving.fuzzing import fuzz_app
from tests.helpers import free_port, start_app, stop_with_ctrl_c, wait_for
from tests.test_reward_hacks import CHECK, HACKS

PORT = free_port()
URL = f"http://127.0.0.1:{PORT}"


def test_verifier_endpoint(workdir: Path):
    proc, lines = start_app(workdir, "verifier", PORT)
    try:
        wait_for(lines, "is up at", timeout=180)
        post = lambda path, body: requests.post(f"{URL}{path}", json=body, timeout=60)  # noqa: E731

        passed = post("/verify/python", {"code": "def f(x):\n    return 2 * x", "tests": "assert f(2) == 4"}).json()
        assert passed["status"] == "passed" and passed["duration_s"] > 0
        failed = post("/verify/python", {"code": "def f(x):\n    return x", "tests": "assert f(2) == 4"}).json()
        assert failed["status"] == "failed" and failed["failed_test"]["line"] == 1
        alone = post("/verify/python", {"code": "print('no tests')"}).json()
        assert alone["status"] == "passed" and alone["output"] == "no tests\n"
        timeout = post("/verify/python", {"code": "while True:\n    pass", "timeout_s": 1}).json()
        assert timeout["status"] == "timeout"
        # the sandbox cannot reach this very Serve endpoint on the host
        reach = post("/verify/python", {"code": f"import urllib.request\nurllib.request.urlopen('{URL}/healthz', timeout=2)"}).json()
        assert reach["status"] == "runtime_error"

        for body, field in [({"code": "x" * 100_001}, "code"), ({"code": "x", "timeout_s": 31}, "timeout_s"),
                            ({"code": "x", "timeout_s": "5"}, "timeout_s"), ({"tests": "assert 1"}, "code"),
                            ({"code": "x", "limits": {}}, "limits")]:
            response = post("/verify/python", body)
            assert response.status_code == 422 and response.json()["error"].startswith(field), (body, response.text)
        malformed = requests.post(f"{URL}/verify/python", data="{", headers={"content-type": "application/json"}, timeout=30)
        assert malformed.status_code == 400

        lean = post("/verify/lean", {"header": "", "proof": "theorem t : True := trivial"})
        assert lean.status_code == 503 and "Lean toolchain not found" in lean.json()["error"]
        assert requests.get(f"{URL}/docs", timeout=30).status_code == 200
        assert requests.get(f"{URL}/healthz", timeout=30).json()["python"]["isolation"] == "bubblewrap"

        # the reward-hack suite through the batch route: each its exact verdict; a malformed job its own
        hacks = [{"code": code, "tests": CHECK, "entry_point": "add", "timeout_s": 2} for code, _ in HACKS.values()]
        batch = post("/verify/python/batch", {"jobs": [*hacks, {"code": 1}]})
        assert batch.status_code == 200
        statuses = [v["status"] for v in batch.json()["verdicts"]]
        assert statuses == [expected for _, expected in HACKS.values()] + ["invalid_request"]
        assert batch.json()["verdicts"][-1]["message"] == "jobs[%d].code: required, a string" % len(hacks)
        in_process = post("/verify/python", {"code": "x = 1", "tests": "assert x == 1", "mode": "in_process"}).json()
        assert (in_process["status"], in_process["isolation"], in_process["forgeable"]) == ("passed", "in_process", True)

        assert fuzz_app(URL, "verifier") == []

        jobs = [{"code": f"n = {i}", "tests": f"assert n * n == {i * i if i % 3 else -1}"} for i in range(96)]
        with ThreadPoolExecutor(32) as clients:
            statuses = list(clients.map(lambda job: post("/verify/python", job).json()["status"], jobs))
        assert statuses == ["failed" if i % 3 == 0 else "passed" for i in range(96)]
    finally:
        assert stop_with_ctrl_c(proc) == 0
