"""An LLM search agent with Search-R1 tags, over an OpenAI-compatible endpoint or a local HF model.

The agent writes `<search>query</search>`; the tool answers with an `<information>` block
listing the top `top_k_shown` results (id, title and a snippet: *shown*). The agent decides
what to read: `<open>id</open>` returns that result's full text (*opened*; at most
`top_k_opened` per search). It ends with `<answer>...</answer>`. Documents it *cites* are the
opened ones whose id or title it mentions in its final turn. Output that
follows none of this (no tag at all, an unclosed tag, an empty answer) ends the episode with
no answer; the trajectory so far is kept, so its shown/opened documents still tier distractors.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from workloads.endpoints import post_completion
from workloads.longtrace.kg import Question
from workloads.longtrace.search import AgentConfig, SearchIndex, Step, Trajectory, parse_agent_output

AGENT_INSTRUCTION = (
    "Answer the question. To look something up, write <search>query</search> and read the "
    "<information> that follows (result ids, titles and snippets). To read a result in full, "
    "write <open>its id</open>. When you know the answer, write <answer>the answer</answer>.\n"
)
TAGS = ("search", "open", "answer")
STOP = [f"</{tag}>" for tag in TAGS]
SNIPPET_CHARS = 80

Generate = Callable[[str], str]  # prompt -> continuation, stopped after a closing tag


def openai_completions(base_url: str, model: str, max_tokens: int, timeout_s: float, retries: int,
                       api_key: str = "") -> Generate:
    """The agent's turns through an OpenAI-compatible endpoint (vLLM, the Serve `generate` app, ...)."""

    def generate(prompt: str) -> str:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stop": STOP}
        choice = post_completion(base_url, body, timeout_s, retries, api_key)
        text = choice["text"]
        # Servers strip the stop string; put the closing tag back so the parser sees it.
        if choice.get("finish_reason") == "stop" and not text.rstrip().endswith(tuple(STOP)):
            unclosed = max(TAGS, key=lambda tag: text.rfind(f"<{tag}>"))
            if text.rfind(f"<{unclosed}>") >= 0:
                text += f"</{unclosed}>"
        return text

    return generate


def hf_generate(model_path: str, max_tokens: int) -> Generate:
    """Greedy continuation with a local causal LM (any directory or hub id)."""
    from workloads.lm import completion_mask, encode_text, generate_ids, load_lm

    model, tokenizer = load_lm(model_path)

    def generate(prompt: str) -> str:
        _, _, completion = generate_ids(model, tokenizer, [encode_text(tokenizer, prompt)], max_tokens, 0.0,
                                        stop_strings=STOP)
        kept = int(completion_mask(completion, tokenizer.eos_token_id)[0].sum())
        return tokenizer.decode(completion[0, :kept], skip_special_tokens=True)

    return generate


@dataclasses.dataclass
class LLMAgent:
    index: SearchIndex
    generate: Generate
    cfg: AgentConfig

    def run(self, question: Question) -> Trajectory:
        transcript = f"{AGENT_INSTRUCTION}Question: {question.question}\n"
        steps: list[Step] = []
        documents = {d.id: d for d in self.index.documents}
        for _ in range(self.cfg.max_turns):
            output = self.generate(transcript)
            transcript += output
            parsed = parse_agent_output(output)
            if parsed["answer"] is not None:
                return Trajectory(question.id, steps, parsed["answer"] or None, self._cited(steps, output))
            if parsed["opens"]:
                transcript += "\n" + self._open(parsed["opens"][-1], steps, documents) + "\n"
                continue
            if not parsed["searches"]:
                break  # malformed: no search, no open, no answer
            query = parsed["searches"][-1]
            hits = [self.index.documents[i] for i in self.index.search(query, self.cfg.top_k_shown)]
            steps.append(Step(query, [d.id for d in hits], []))
            listing = "\n".join(f"[{d.id}] {d.title}: {d.text[:SNIPPET_CHARS]}" for d in hits) or "no results"
            transcript += f"\n<information>\n{listing}\n</information>\n"
        return Trajectory(question.id, steps, None, [])

    def _open(self, doc_id: str, steps: list[Step], documents: dict) -> str:
        """The tool's answer to `<open>`: the full text of a result of the last search."""
        doc_id = doc_id.strip().strip("[]")
        if not steps or doc_id not in steps[-1].shown:
            return f"<document>{doc_id}: not among the last search's results</document>"
        step = steps[-1]
        if doc_id not in step.opened:
            if len(step.opened) >= self.cfg.top_k_opened:
                return f"<document>at most {self.cfg.top_k_opened} results can be opened per search</document>"
            step.opened.append(doc_id)
        document = documents[doc_id]
        return f"<document>[{document.id}] {document.title}\n{document.text}</document>"

    def _cited(self, steps: list[Step], final_output: str) -> list[str]:
        titles = {d.id: d.title for d in self.index.documents}
        opened = [doc_id for step in steps for doc_id in step.opened]
        return list(dict.fromkeys(d for d in opened if d in final_output or titles[d] in final_output))


def make_generate(cfg: AgentConfig) -> Generate:
    backends = {
        "openai": lambda: openai_completions(cfg.endpoint, cfg.model, cfg.max_tokens, cfg.timeout_s, cfg.retries, cfg.api_key),
        "hf": lambda: hf_generate(cfg.model, cfg.max_tokens),
    }
    return backends[cfg.kind]()
