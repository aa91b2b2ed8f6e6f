"""Search tool, heuristic search agent and tiered distractor contexts (no Ray here).

The agent's trajectory is what tiers the distractors: per step the query, the documents
*shown* (search results) and *opened* (read); at the end the answer and the documents
*cited*. Tier 1 (highly confusable) = opened but not cited; tier 2 = shown but never opened.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import ClassVar, Mapping

import bm25s
import numpy as np

from workloads.config import require
from workloads.longtrace.kg import RELATIONS, Document, Question

INSTRUCTION = ("Answer the question using the documents. Think step by step, then give the final "
               "answer after 'Answer:'.")


class SearchIndex:
    """BM25 (bm25s) over a corpus, built once; `search(query, k)` -> document indices."""

    def __init__(self, documents: list[Document]):
        if not documents:
            raise ValueError("corpus: empty, nothing to index")
        self.documents = documents
        self.retriever = bm25s.BM25()
        texts = [f"{d.title}. {d.text}" for d in documents]
        self.retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)

    def __setstate__(self, state: dict) -> None:
        """Unpickled (as every actor receives it from the object store) with canonical dtypes:
        an unpickled numpy array carries a non-builtin copy of its dtype, which takes
        `np.add.at` (bm25s' scoring) off its fast path, 1.5x slower per query here."""
        self.__dict__.update(state)
        scores = self.retriever.scores
        for name, array in scores.items():
            if isinstance(array, np.ndarray):
                scores[name] = array.view(np.dtype(array.dtype.str))

    def search(self, query: str, k: int) -> list[int]:
        """The k best-scoring documents that share a term with the query, best first."""
        tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
        token_ids = self.retriever.get_tokens_ids(tokens)
        if not token_ids:
            return []
        scores = self.retriever.get_scores_from_ids(token_ids)
        # Rank only the documents a query term occurs in: a selection over the whole (mostly
        # zero) score vector is memory-bound and was a third of a question's cost at 40k documents.
        hits = np.flatnonzero(scores)
        if len(hits) > k:
            hits = hits[np.argpartition(-scores[hits], k - 1)[:k]]
        return hits[np.argsort(-scores[hits], kind="stable")].tolist()


@dataclasses.dataclass
class Step:
    query: str
    shown: list[str]
    opened: list[str]


@dataclasses.dataclass
class Trajectory:
    question_id: str
    steps: list[Step]
    answer: str | None
    cited: list[str]

    @property
    def shown(self) -> set[str]:
        return {d for s in self.steps for d in s.shown}

    @property
    def opened(self) -> set[str]:
        return {d for s in self.steps for d in s.opened}


AGENT_KINDS = ("heuristic", "openai", "hf")


@dataclasses.dataclass
class AgentConfig:
    """The search agent whose trajectories tier the distractors."""

    kind: str = "heuristic"  # heuristic | openai (OpenAI-compatible completions endpoint) | hf (local model)
    top_k_shown: int = 8  # search results shown per query
    top_k_opened: int = 3  # results the heuristic agent opens per query
    endpoint: str = ""  # openai: base URL, e.g. http://vllm-host:8000
    model: str = ""  # openai: the served model name; hf: a directory or hub id
    api_key: str = ""  # llm: bearer token, if the endpoint needs one
    max_turns: int = 6  # llm: search turns before it must answer
    max_tokens: int = 128  # llm: tokens per turn
    timeout_s: float = 60.0  # llm: per request
    retries: int = 2  # llm: retries per request
    section: ClassVar[str] = "agent"

    def validate(self) -> None:
        require(self.kind in AGENT_KINDS, "kind", f"expected one of {', '.join(AGENT_KINDS)}")
        require(1 <= self.top_k_opened <= self.top_k_shown, "top_k_opened", "need 1 <= top_k_opened <= top_k_shown")
        require(self.kind != "openai" or bool(self.endpoint), "endpoint", "the openai agent needs an endpoint URL")
        require(self.kind != "hf" or bool(self.model), "model", "the hf agent needs a model directory or hub id")
        require(self.max_turns >= 1, "max_turns", "must be >= 1")


def make_agent(index: "SearchIndex", cfg: AgentConfig):
    """The configured search agent (a registry of kinds, not an if-chain at call sites)."""
    if cfg.kind == "heuristic":
        return HeuristicAgent(index, cfg)
    from workloads.longtrace.llm_agent import LLMAgent, make_generate

    return LLMAgent(index, make_generate(cfg), cfg)


class HeuristicAgent:
    """One query per hop from the relation template and the last entity found; it opens the
    top results, reads the fact sentence that continues the chain, and cites the documents
    its answer chain used."""

    def __init__(self, index: SearchIndex, cfg: AgentConfig = AgentConfig()):
        self.index, self.cfg = index, cfg
        self.title_of = {d.id: d.title for d in index.documents}
        self.page_of: dict[str, Document] = {}  # title -> the first document with that title
        for document in index.documents:
            self.page_of.setdefault(document.title, document)

    def run(self, question: Question) -> Trajectory:
        current, steps, cited = question.chain[0], [], []
        for relation in question.relations:
            words = relation.replace("_", " ")
            query = f"{current} {words}"
            hits = [self.index.documents[i] for i in self.index.search(query, self.cfg.top_k_shown)]
            opened = hits[: self.cfg.top_k_opened]
            steps.append(Step(query, [d.id for d in hits], [d.id for d in opened]))
            found = None
            for document in opened:
                found = read_fact(document.text, current, relation)
                if found:
                    cited.append(document.id)
                    break
            if found is None:
                return Trajectory(question.id, steps, None, cited)
            current = found
        answer_doc = self.page_of.get(current)
        if answer_doc is not None and answer_doc.id not in cited:
            cited.append(answer_doc.id)  # the answer entity's own page confirms it
        return Trajectory(question.id, steps, current, cited)


def read_fact(text: str, head: str, relation: str) -> str | None:
    """The tail of `head -relation->` stated in `text`, or None."""
    template = RELATIONS[relation][2] if relation in RELATIONS else "{head} {relation} {tail}."
    pattern = re.escape(template).replace(re.escape("{head}"), re.escape(head))
    pattern = pattern.replace(re.escape("{relation}"), re.escape(relation.replace("_", " ")))
    pattern = pattern.replace(re.escape("{tail}"), r"(.+?)")
    match = re.search(pattern, text)
    return match.group(1) if match else None


def parse_agent_output(text: str) -> dict:
    """Search-R1 style tags from an LLM agent; malformed output yields what could be read."""
    searches = re.findall(r"<search>(.*?)</search>", text, flags=re.S)
    answers = re.findall(r"<answer>(.*?)</answer>", text, flags=re.S)
    searches = [s.strip() for s in searches if s.strip()]
    return {"searches": searches,
            "answer": answers[-1].strip() if answers else None,
            "malformed": not answers and not searches}


@dataclasses.dataclass
class ContextConfig:
    """How a training context is filled: token budget, tier shares, filler."""

    budget_tokens: int = 1024  # context length in reader tokens
    tier1_share: float = 0.5  # of the distractor budget
    tier2_share: float = 0.3  # share of the distractor budget for tier 2 (shown, not opened)
    fill_random: bool = True  # random filler while still under budget
    section: ClassVar[str] = "context"

    def validate(self) -> None:
        require(self.budget_tokens >= 16, "budget_tokens", "must be >= 16")
        require(0 <= self.tier1_share and 0 <= self.tier2_share and self.tier1_share + self.tier2_share <= 1,
                "tier1_share", "tier1_share and tier2_share must be >= 0 and sum to <= 1")


def _random_candidates(rng: random.Random, doc_ids: list[str], taken: set[str], draws: int = 64):
    """Random document ids not yet taken, drawn lazily (the corpus may be huge)."""
    if len(doc_ids) <= draws:
        shuffled = list(doc_ids)
        rng.shuffle(shuffled)
        yield from (i for i in shuffled if i not in taken)
        return
    for _ in range(draws):
        candidate = doc_ids[rng.randrange(len(doc_ids))]
        if candidate not in taken:
            yield candidate


def document_section(document: Document) -> str:
    return f"[{document.id}] {document.title}\n{document.text}"


def build_context(question: Question, trajectory: Trajectory | None, documents: dict[str, Document],
                  section_tokens: Mapping[str, int], cfg: ContextConfig, seed: int, mode: str = "tiered",
                  doc_ids: list[str] | None = None) -> dict | None:
    """A training row, or None when the gold documents alone exceed the budget.

    mode 'tiered': gold + tier 1 + tier 2 + filler; mode 'random': gold + random documents to
    the same budget (the baseline of the difficulty comparison). `section_tokens` holds every
    document's section length in the reader's tokens (`actors.longtrace.section_tokens`); `doc_ids` (the
    corpus ids, listed once by the caller) is where random filler is drawn from."""
    rng = random.Random(f"{seed}-{question.id}-{mode}")
    gold = [documents[i] for i in question.gold_doc_ids]
    used = sum(section_tokens[d.id] for d in gold)
    if used > cfg.budget_tokens:
        return None
    chosen = [(d, "gold") for d in gold]
    taken = {d.id for d in gold}
    remaining = cfg.budget_tokens - used

    def fill(candidates: list[str], tier: str, allowance: int) -> int:
        spent = 0
        for doc_id in candidates:
            if doc_id in taken:
                continue
            cost = section_tokens[doc_id]
            if spent + cost > allowance:
                continue
            chosen.append((documents[doc_id], tier))
            taken.add(doc_id)
            spent += cost
        return spent

    if mode == "tiered" and trajectory is not None:
        cited = set(trajectory.cited)
        tier1 = sorted(trajectory.opened - cited)
        tier2 = sorted(trajectory.shown - trajectory.opened)
        rng.shuffle(tier1)
        rng.shuffle(tier2)
        spent1 = fill(tier1, "tier1", int(remaining * cfg.tier1_share))
        spent2 = fill(tier2, "tier2", int(remaining * cfg.tier2_share))
        remaining -= spent1 + spent2
    if mode == "random" or cfg.fill_random:
        fill(_random_candidates(rng, doc_ids if doc_ids is not None else list(documents), taken), "filler", remaining)
    rng.shuffle(chosen)
    sections = "\n\n".join(document_section(d) for d, _ in chosen)
    content = f"{INSTRUCTION}\n\nDocuments:\n{sections}\n\nQuestion: {question.question}"
    return {
        "source": f"longtrace-{mode}",
        "input_messages": [{"role": "user", "content": content}],
        "label": question.label,
        "metadata": {
            "extra_reward_info": {"question": question.question, "rubrics": question.rubrics,
                                  "dataset_name": "longtrace-synthetic"},
            "question_id": question.id,
            "doc_ids": [d.id for d, _ in chosen],
            "doc_tiers": [tier for _, tier in chosen],
            "context_tokens": sum(section_tokens[d.id] for d, _ in chosen),
        },
    }
