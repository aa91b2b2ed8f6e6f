"""What one agent reads and writes, in plain Python/torch: the prompt layout, the role data the
role models are trained on, and the step writer (one reasoning step at a time, ending at the
end-of-step marker).

Prompt layout (one line per step; the end-of-step marker is the newline):

    Q: convert 3 km to mm          the question, as the task writes it
    A> 3 km = 30 hm                upstream A's steps received so far, one block per upstream,
    A> 30 hm = 300 dam             labelled A, B, ... in the agent's upstream order
    3 km = 30 hm                   the agent's own steps so far; the next line is its next step

A solver reads no upstream, so its prompt is the question and its own steps: the task's plain
trace format. A checker re-derives each step with the upstream steps as evidence. Its role data
come from the task's reference traces: upstream traces corrupted from a random step on (a digit
changed, as a wrong calculation would), every number of upstream steps from "only as many as
the agent has written" (what streaming hands over) to "all of them" (what serial hands over),
and the target is the reference's next step. The models never see which upstream steps are
wrong; an agent has to judge that itself.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Sequence

END_OF_STEP = "\n"
UPSTREAM_LABELS = "ABCDEFGH"


def agent_prompt(question: str, upstream: Sequence[Sequence[str]], own: Sequence[str]) -> str:
    """The text an agent continues to write its next step (the question ends with a newline)."""
    lines = [f"{UPSTREAM_LABELS[i]}> {step}" for i, steps in enumerate(upstream) for step in steps]
    return question + "".join(line + END_OF_STEP for line in [*lines, *own])


def is_final(step: str) -> bool:
    """The answer line ends an agent's trace (`Answer: ...`, or the python family's `answer = ...`)."""
    return step.lower().startswith("answer")


def corrupt_step(step: str, rng: random.Random) -> str:
    """The step with one digit of its result (after '=' or ':' when there is one) changed."""
    cut = max(step.rfind("="), step.rfind(":")) + 1
    digits = [i for i in range(cut, len(step)) if step[i].isdigit()] or [i for i, c in enumerate(step) if c.isdigit()]
    if not digits:
        return step + "0"
    i = rng.choice(digits)
    return step[:i] + rng.choice([d for d in "0123456789" if d != step[i]]) + step[i + 1:]


def corrupted_trace(reference: Sequence[str], rng: random.Random, clean_rate: float) -> list[str]:
    """An upstream trace as an imperfect agent writes it: clean with probability `clean_rate`,
    otherwise right up to a random step and, from there on, each step wrong with probability 0.7."""
    if rng.random() < clean_rate:
        return list(reference)
    first = rng.randrange(len(reference))
    return [step if i < first or (i > first and rng.random() < 0.3) else corrupt_step(step, rng)
            for i, step in enumerate(reference)]


def checker_rows(question: str, reference: Sequence[str], rng: random.Random, max_upstreams: int,
                 clean_rate: float = 0.3) -> list[dict]:
    """One prompt/completion row per reference step k: a checker that has received some of its
    upstreams' (possibly wrong) steps and written the reference's steps before k writes the rest."""
    n_upstreams = rng.randint(1, max_upstreams)
    upstreams = [corrupted_trace(reference, rng, clean_rate) for _ in range(n_upstreams)]
    rows = []
    for k in range(len(reference)):
        # received: from k+1 steps (streaming's least) to all (serial); now and then fewer (an upstream that ended early)
        received = [u[: rng.randint(k + 1, len(u)) if rng.random() < 0.9 else rng.randint(0, k)] for u in upstreams]
        # The completion runs to the end of the trace: a trainer that ends completions with eos
        # (TRL does) must see eos only after the answer line, never after an inner step.
        rows.append({"prompt": agent_prompt(question, received, reference[:k]),
                     "completion": "".join(step + END_OF_STEP for step in reference[k:])})
    return rows


def solver_rows(question: str, reference: Sequence[str]) -> list[dict]:
    """The whole trace as one completion: a causal LM's loss on it is every step given the ones before."""
    return [{"prompt": agent_prompt(question, [], []), "completion": "".join(s + END_OF_STEP for s in reference)}]


ROLE_DATA: dict[str, Callable[..., list[dict]]] = {
    "solver": lambda question, reference, rng, max_upstreams: solver_rows(question, reference),
    "checker": checker_rows,
}


def role_rows(role: str, problems: Sequence, reference: Callable, seed: int, max_upstreams: int) -> list[dict]:
    """Prompt/completion rows of `role` for every problem (`reference(problem)` gives its steps)."""
    rng = random.Random(seed)
    return [row for p in problems for row in ROLE_DATA[role](p.prompt, reference(p), rng, max_upstreams)]


@dataclasses.dataclass
class Step:
    """One reasoning step as an agent wrote it."""

    agent: str
    index: int
    text: str
    tokens: int  # generated tokens, the end-of-step marker included
    truncated: bool  # the writer stopped it at `max_step_tokens` without an end-of-step marker
    created: float  # wall-clock time (time.time()) the step was complete
    first_token: float  # when its first token was generated


class StepWriter:
    """Writes one step of a local causal LM: tokens until the end-of-step marker (or eos) or
    `max_step_tokens`, with the KV cache of `workloads.lm.stream_tokens`."""

    def __init__(self, model, tokenizer, max_step_tokens: int, temperature: float = 0.0, seed: int = 0):
        self.model, self.tokenizer = model, tokenizer
        self.max_step_tokens, self.temperature, self.seed = max_step_tokens, temperature, seed
        self.calls = 0

    def prompt_tokens(self, prompt: str) -> int:
        from workloads.lm import encode_text

        return len(encode_text(self.tokenizer, prompt))

    def write(self, prompt: str, agent: str, index: int, should_stop: Callable[[], bool] = lambda: False) -> Step | None:
        """The next step after `prompt`; None when the model ends its output (eos before any text)
        or `should_stop()` turns true mid-step (a cancelled run)."""
        from workloads.lm import encode_text, stream_tokens

        self.calls += 1
        ids, first_token = [], 0.0
        eos = self.tokenizer.eos_token_id
        sequence = encode_text(self.tokenizer, prompt)
        limit = self.model.config.max_position_embeddings - len(sequence)
        for token in stream_tokens(self.model, sequence, min(self.max_step_tokens, max(limit, 0)), self.temperature,
                                   seed=self.seed * 100003 + self.calls):
            if should_stop():
                return None
            first_token = first_token or time.time()
            if token == eos:
                ids.append(token)
                break
            ids.append(token)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if END_OF_STEP in text:
                return Step(agent, index, text.split(END_OF_STEP)[0].strip(), len(ids), False, time.time(), first_token)
        text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        if not text and (not ids or ids[-1] == eos):
            return None
        return Step(agent, index, text, len(ids), not ids or ids[-1] != eos, time.time(), first_token or time.time())


class EndpointStepWriter:
    """Writes one step through an OpenAI-compatible streaming completion endpoint (vLLM, the Serve
    `generate` app): `stream: true`, stopped at the end-of-step marker, read event by event."""

    def __init__(self, base_url: str, model: str, max_step_tokens: int, temperature: float = 0.0, seed: int = 0,
                 timeout_s: float = 60.0):
        self.url = base_url.rstrip("/") + "/v1/completions"
        self.model, self.max_step_tokens, self.temperature, self.seed, self.timeout_s = model, max_step_tokens, temperature, seed, timeout_s
        self.calls = 0

    def prompt_tokens(self, prompt: str) -> int:
        return 0  # the endpoint's tokenizer is not ours; its usage field is not streamed by every server

    def write(self, prompt: str, agent: str, index: int, should_stop: Callable[[], bool] = lambda: False) -> Step | None:
        import json
        import urllib.request

        from workloads.endpoints import EndpointError

        self.calls += 1
        body = {"model": self.model, "prompt": prompt, "max_tokens": self.max_step_tokens, "temperature": self.temperature,
                "stop": [END_OF_STEP], "stream": True, "seed": self.seed * 100003 + self.calls}
        request = urllib.request.Request(self.url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        text, chunks, first_token, finish, stop_reason = "", 0, 0.0, None, None  # chunks: those carrying text
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                for raw in response:
                    line = raw.decode().strip()
                    if not line.startswith("data:") or line == "data: [DONE]":
                        continue
                    if should_stop():
                        return None
                    choice = json.loads(line[5:])["choices"][0]
                    first_token = first_token or time.time()
                    text += choice.get("text", "")
                    chunks += bool(choice.get("text"))
                    finish = choice.get("finish_reason") or finish
                    stop_reason = choice.get("stop_reason") or stop_reason
        except (OSError, ValueError, KeyError, IndexError) as exc:
            raise EndpointError(f"endpoint {self.url}: streaming completion failed ({exc!r})") from None
        # As the local writer: an empty step that ends with the marker is a step; empty output
        # that ends otherwise (eos; servers name the stop string in `stop_reason`, vLLM's field) ends the agent.
        if not text.strip() and finish != "length" and stop_reason != END_OF_STEP:
            return None
        # a chunk per token (as vLLM and the generate app stream), plus the marker or eos the server keeps back
        tokens = chunks + (finish != "length")
        return Step(agent, index, text.split(END_OF_STEP)[0].strip(), tokens, finish == "length", time.time(),
                    first_token or time.time())


def score_traces(task, problems: Sequence, traces: Sequence[Sequence[str]]) -> tuple[list[bool], list[list[bool]]]:
    """(answer correct, each reference position verified) per trace, judged exactly by the task's
    step checker (`workloads.tri.traces`): the answer is right when the step at the reference
    answer's position is the answer line and verifies; a missing step counts as wrong."""
    from workloads.tri.traces import verify_traces

    verdicts = verify_traces(task, list(problems), ["\n".join(s or "?" for s in t) for t in traces])  # an empty step keeps its place
    answers, positions = [], []
    for problem, trace, verdict in zip(problems, traces, verdicts):
        length = len(task.reference(problem))
        verified = [i < len(verdict.verified) and verdict.verified[i] for i in range(length)]
        answers.append(len(trace) >= length and is_final(trace[length - 1]) and verified[-1])
        positions.append(verified)
    return answers, positions
