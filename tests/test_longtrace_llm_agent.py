"""The LLM search agent: Search-R1 tags over a real HTTP completions server, malformed output,
an unreachable endpoint, a local HF model, and the data pipeline driving it."""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import mlflow_client, python_module, result_lines
from workloads.longtrace import group_rewards
from workloads.longtrace.kg import (
    KGConfig,
    Skips,
    build_corpus,
    generate_questions,
    synthetic_kg,
)
from workloads.endpoints import EndpointError
from workloads.longtrace.llm_agent import (
    LLMAgent,
    hf_generate,
    openai_completions,
)
from workloads.longtrace.reward import llm_judge
from workloads.longtrace.search import AgentConfig, SearchIndex
from workloads.lm import TinyLMConfig, build_tiny_lm, load_lm


class ScriptedCompletions(BaseHTTPRequestHandler):
    """A completions server whose "model" searches for the question's first entity, opens the
    first two results, then answers with the first (or misbehaves, per `mode`)."""

    mode = "agent"

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = request["prompt"]
        if self.mode == "judge":  # a judge that compares case-insensitively
            reference = re.search(r"Reference answer: (.*)\n", prompt).group(1)
            candidate = re.search(r"Candidate answer: (.*)\n", prompt).group(1)
            body = {"choices": [{"text": " yes" if reference.lower() == candidate.lower() else " no"}]}
        elif self.mode == "garbage":
            body = {"choices": [{"text": "I am not sure what to do.", "finish_reason": "length"}]}
        elif self.mode == "broken":
            body = {"unexpected": True}
        elif "\n<information>\n" not in prompt:  # (the instruction itself names the tag)
            entity = re.search(r"(?:where|that|founded|of|in which) ([A-Z][a-z]+ [A-Z][a-z]+)", prompt)
            body = {"choices": [{"text": f"<search>{entity.group(1) if entity else 'who'} was born in", "finish_reason": "stop"}]}
        elif prompt.count("<document>") < 2:  # open the first two results, one per turn
            shown = re.findall(r"\[(d\d+)\]", prompt.rsplit("<information>", 1)[1])
            body = {"choices": [{"text": f"<open>{shown[prompt.count('<document>')]}", "finish_reason": "stop"}]}
        else:
            opened = re.search(r"<document>\[(d\d+)\] ([^\n]+)\n", prompt)
            body = {"choices": [{"text": f"It is [{opened.group(1)}]. <answer>{opened.group(2)}", "finish_reason": "stop"}]}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def completions_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedCompletions)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    ScriptedCompletions.mode = "agent"
    server.shutdown()


@pytest.fixture(scope="module")
def world():
    cfg, skips = KGConfig(num_questions=5), Skips()
    kg = synthetic_kg(cfg, 0)
    documents = build_corpus(kg, cfg, skips)
    return SearchIndex(documents), generate_questions(kg, documents, cfg, 0, skips)


def url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_agent_records_searches_shown_opened_and_cited(completions_server, world):
    index, questions = world
    cfg = AgentConfig(kind="openai", endpoint=url(completions_server), top_k_shown=5, top_k_opened=2)
    agent = LLMAgent(index, openai_completions(cfg.endpoint, "m", 64, 5.0, 0), cfg)
    trajectory = agent.run(questions[0])
    (step,) = trajectory.steps
    assert step.query and len(step.shown) == 5 and step.opened == step.shown[:2]  # 'born' matches many pages; it opened two
    first = next(d for d in index.documents if d.id == step.shown[0])
    assert trajectory.answer == first.title and trajectory.cited == [first.id]


def test_malformed_output_ends_the_episode_without_an_answer(completions_server, world):
    index, questions = world
    ScriptedCompletions.mode = "garbage"
    cfg = AgentConfig(kind="openai", endpoint=url(completions_server))
    trajectory = LLMAgent(index, openai_completions(cfg.endpoint, "m", 64, 5.0, 0), cfg).run(questions[0])
    assert trajectory.answer is None and trajectory.steps == [] and trajectory.cited == []


def test_broken_responses_and_dead_endpoints_raise_a_clear_error(completions_server):
    ScriptedCompletions.mode = "broken"
    with pytest.raises(EndpointError, match="malformed completion response"):
        openai_completions(url(completions_server), "m", 8, 5.0, 0)("x")
    with pytest.raises(EndpointError, match="unreachable after 2 attempts"):
        openai_completions("http://127.0.0.1:9", "m", 8, 1.0, 1)("x")


def test_local_hf_agent_runs_on_a_tiny_model(tmp_path, world):
    index, questions = world
    model_dir = build_tiny_lm(TinyLMConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                           intermediate_size=64), tmp_path / "agent")
    cfg = AgentConfig(kind="hf", model=str(model_dir), max_turns=2)
    generate = hf_generate(str(model_dir), 16)
    _, tokenizer = load_lm(model_dir)
    output = generate("Question: where?\n")
    assert 0 < len(tokenizer.encode(output, add_special_tokens=False)) <= 16
    # An untrained model writes no tags: the episode ends at once, with no answer and no search.
    trajectory = LLMAgent(index, generate, cfg).run(questions[0])
    assert trajectory.question_id == questions[0].id
    assert trajectory.answer is None and trajectory.steps == [] and trajectory.cited == []


def test_data_pipeline_with_the_endpoint_agent_and_with_it_down(completions_server, workdir: Path):
    proc = python_module(workdir, "pipelines.longtrace_data", "--set", "kg.num_questions=12", "num_actors=1",
                         "agent.kind=openai", f"agent.endpoint={url(completions_server)}", "output_dir=built")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (summary,) = result_lines(proc.stdout)
    assert summary["value"] == 12
    import pyarrow.dataset as ds

    rows = ds.dataset(str(workdir / "built" / "mode=tiered"), format="parquet").to_table().to_pylist()
    tiers = {tier for row in rows for tier in row["metadata"]["doc_tiers"]}
    assert {"gold", "tier1", "tier2"} <= tiers  # what it opened and did not cite, and shown-but-unopened results

    down = python_module(workdir, "pipelines.longtrace_data", "--set", "kg.num_questions=4", "num_actors=1",
                         "agent.kind=openai", "agent.endpoint=http://127.0.0.1:9", "agent.retries=0",
                         "agent.timeout_s=1", "output_dir=down")
    assert down.returncode == 0, down.stderr[-2000:]
    (summary,) = result_lines(down.stdout)
    assert summary["value"] == 0
    assert any("endpoint failed" in reason for reason in summary["extra"]["skipped"])
    run = mlflow_client(workdir).get_run(summary["run_id"])
    assert any(key.startswith("skipped/search agent endpoint failed") for key in run.data.metrics)


def test_llm_judge_endpoint_decides_the_outcome(completions_server):
    ScriptedCompletions.mode = "judge"
    judge = llm_judge(url(completions_server), "judge-model", timeout_s=5.0, retries=0)
    responses = ["A > B. Answer: PARIS", "A > B. Answer: Lyon"]
    # exact match would accept PARIS too (norm lowercases); the LLM judge's verdicts are used as given
    assert group_rewards(responses, "Paris", ["A", "B"], eta=0.3, judge=judge) == pytest.approx([1.0, 0.0])
    ScriptedCompletions.mode = "broken"
    with pytest.raises(EndpointError, match="malformed"):
        judge("x", "y")
