"""`rayworks serve streamma` in a fresh process, over real HTTP: server-sent events carry every
agent's steps as they are written and then the final answer; bad requests are named 422s; a
client that disconnects mid-stream stops the agents. The models never end a step on their own
(`helpers.endless_model`), so every run has a known length and a disconnect lands mid-run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from tests.helpers import endless_model, free_port, start_app, stop_with_ctrl_c, wait_for

PORT = free_port()
URL = f"http://127.0.0.1:{PORT}"
MAX_STEPS, STEP_TOKENS = 8, 32  # the app's defaults


def events(response) -> list:
    out = []
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("data: "):
            out.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return endless_model(Path(tmp_path_factory.mktemp("streamma-model")))


def test_streamma_endpoint(workdir: Path, model: str):
    proc, lines = start_app(workdir, "streamma", PORT, "--solver", model, "--checker", model)
    try:
        wait_for(lines, "is up at", timeout=180)
        assert requests.get(f"{URL}/healthz", timeout=30).json()["status"] == "ok"

        body = {"task": "units", "problem": "4 km>hm>dam>m", "protocol": "stream", "depth": 3}
        with requests.post(f"{URL}/solve", json=body, stream=True, timeout=120) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            received = events(response)
        start, *steps, final, done = received
        assert start["event"] == "start" and [a["name"] for a in start["agents"]] == ["solver", "checker1", "checker2"]
        assert done == "[DONE]" and final["event"] == "final"
        order = [(e["agent"], e["index"]) for e in steps]
        for agent in ("solver", "checker1", "checker2"):
            assert [i for a, i in order if a == agent] == list(range(MAX_STEPS))
        # streamed: the first checker's first step was written before the solver's last one (the
        # relay's event order also depends on scheduling, so the check reads when steps were written)
        created = {(e["agent"], e["index"]): e["created"] for e in steps}
        assert created[("checker1", 0)] < created[("solver", MAX_STEPS - 1)]
        assert all(e["truncated"] for e in steps) and len(final["steps"]) == MAX_STEPS
        assert final["generated_tokens"] == 3 * MAX_STEPS * STEP_TOKENS and final["answer_correct"] is False
        assert 0 < final["first_final_token_s"] < final["latency_s"] and final["lost"] == [] and final["dead"] == []

        with requests.post(f"{URL}/solve", json=dict(body, protocol="serial"), stream=True, timeout=120) as response:
            order = [(e["agent"], e["index"]) for e in events(response)[1:-2]]
        assert order.index(("checker1", 0)) > order.index(("solver", MAX_STEPS - 1))  # serial hands over whole chains

        for bad, named in (({**body, "task": "chess"}, "task"), ({**body, "problem": "4 km>parsec"}, "problem"),
                           ({**body, "depth": 7}, "depth"), ({**body, "speed": 2}, "speed"), ({**body, "protocol": 1}, "protocol")):
            answer = requests.post(f"{URL}/solve", json=bad, timeout=30)
            assert answer.status_code == 422 and named in answer.text, (bad, answer.text)

        # a client that leaves after the first step: every agent stops, mid-step included
        with requests.post(f"{URL}/solve", json=dict(body, depth=6), stream=True, timeout=120) as response:
            stream = response.iter_lines(decode_unicode=True)
            run_id = next(json.loads(line[6:])["run_id"] for line in stream if line.startswith("data: "))
            next(line for line in stream if line.startswith("data: "))
        deadline, record = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            answer = requests.get(f"{URL}/runs/{run_id}", timeout=30)
            if answer.status_code == 200:
                record = answer.json()
                break
            time.sleep(0.5)
        assert record is not None and record["cancelled"], record
        assert not [agent for agent in record["agents"].values() if "error" in agent], record
        written = sum(agent["steps"] for agent in record["agents"].values())
        assert all(agent["ended"] for agent in record["agents"].values()) and written < 6 * MAX_STEPS, record
        assert requests.get(f"{URL}/runs/nonexistent", timeout=30).status_code == 404
    finally:
        assert stop_with_ctrl_c(proc) == 0
