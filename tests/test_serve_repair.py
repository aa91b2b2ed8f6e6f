"""`rayworks serve repair` in a fresh process, over real HTTP: every step's verdict, what each
method spends, bad drafts and problems as verdicts or named errors, fuzzed bodies. The models
are untrained (their text is noise): what is checked is the loop and the verifier around them,
which must not depend on the models being good."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from serving.fuzzing import fuzz_app
from tests.helpers import free_port, rayworks, start_app, stop_with_ctrl_c, wait_for

PORT = free_port()
URL = f"http://127.0.0.1:{PORT}"
RIGHT = "4 km = 40 hm\n40 hm = 400 dam\n400 dam = 4000 m\nAnswer: 4000 m\n"
# step 1 is wrong; step 2 verifies on its own: the milestone
BROKEN = "4 km = 40 hm\n40 hm = 401 dam\n400 dam = 4000 m\nAnswer: 4000 m\n"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[str, str]:
    from workloads.lm import TinyLMConfig, build_tiny_lm, load_lm
    from workloads.lm.infilling import add_infilling_tokens

    root = tmp_path_factory.mktemp("tri-models")
    draft = build_tiny_lm(TinyLMConfig(), root / "draft")
    infiller, tokenizer = load_lm(draft)
    add_infilling_tokens(infiller, tokenizer)
    infiller.save_pretrained(root / "infiller")
    tokenizer.save_pretrained(root / "infiller")
    return str(draft), str(root / "infiller")


def test_repair_endpoint(workdir: Path, models: tuple[str, str]):
    draft, infiller = models
    proc, lines = start_app(workdir, "repair", PORT, "--draft", draft, "--infiller", infiller)
    try:
        wait_for(lines, "is up at", timeout=180)
        post = lambda body: requests.post(f"{URL}/repair", json=body, timeout=120)  # noqa: E731
        problem = "4 km>hm>dam>m"

        right = post({"task": "units", "problem": problem, "draft": RIGHT}).json()
        assert right["solved"] and right["draft_solved"] and right["generated_tokens"] == 0 and right["infills"] == 0
        assert [s["verified"] for s in right["steps"]] == [True] * 4 and right["first_failure"] is None

        tri = post({"task": "units", "problem": problem, "draft": BROKEN, "rounds": 1}).json()
        assert tri["infills"] == 1 and tri["regenerations"] == 0 and not tri["draft_solved"]
        assert tri["generated_tokens"] > 0 and tri["prompt_tokens"] > 0
        assert len(tri["steps"]) == len([line for line in tri["solution"].split("\n") if line.strip()])
        assert tri["solution"].startswith("4 km = 40 hm\n") and tri["solution"].endswith("400 dam = 4000 m\nAnswer: 4000 m\n")

        baseline = post({"task": "units", "problem": problem, "draft": BROKEN, "rounds": 1, "method": "regenerate"}).json()
        assert baseline["regenerations"] == 1 and baseline["infills"] == 0 and baseline["fallbacks"] == 0

        written = post({"task": "units", "problem": problem, "rounds": 0}).json()
        assert written["generated_tokens"] > 0 and written["infills"] + written["regenerations"] == 0

        # python steps run in the sandbox: one that loops is stopped, fails and is counted
        looping = post({"task": "python", "problem": "7; *3; +4", "draft": "x0 = 7\nwhile True: pass\nx2 = x1 + 4\n",
                        "rounds": 0}).json()
        assert [s["verified"] for s in looping["steps"]] == [True, False, True] and looping["checker_errors"] == 1

        # bad drafts are verdicts: no steps -> no milestone -> a counted fallback to regeneration
        empty = post({"task": "units", "problem": problem, "draft": "", "rounds": 1}).json()
        assert empty["fallbacks"] == 1 and empty["regenerations"] == 1
        # a question longer than the model's context: every generation is refused and counted
        long_chain = "1" + "+1" * 127
        too_long = post({"task": "arithmetic", "problem": long_chain, "rounds": 2}).json()
        assert too_long["too_long"] == 3 and too_long["generated_tokens"] == 0 and not too_long["solved"]

        for body, field in [({"task": "units", "problem": "4 km>g"}, "problem"), ({"task": "chess", "problem": "1"}, "task"),
                            ({"task": "units", "problem": problem, "rounds": -1}, "rounds"),
                            ({"task": "units", "problem": problem, "window": 0}, "window"),
                            ({"task": "units", "problem": problem, "draft": 3}, "draft"), ({"task": "units"}, "problem")]:
            response = post(body)
            assert response.status_code == 422 and response.json()["error"].startswith(field), (body, response.text)

        assert fuzz_app(URL, "repair") == []
    finally:
        assert stop_with_ctrl_c(proc) == 0


def test_repair_without_models_names_what_is_missing(workdir: Path):
    proc = rayworks(workdir, "serve", "repair", "--port", str(free_port()), timeout=180)
    assert proc.returncode == 2 and "rayworks-tri-draft" in proc.stderr and "rayworks run tri" in proc.stderr, proc.stderr
