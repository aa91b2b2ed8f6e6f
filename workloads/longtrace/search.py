"""Search tool, the reading search agent and tiered distractor contexts (no Ray here).

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
from workloads.longtrace.kg import SYNTHETIC_DATASET, Document, Question

INSTRUCTION = ("Answer the question using the documents. Think step by step, then give the final "
               "answer after 'Answer:'.")


class SearchIndex:
    """BM25 (bm25s) over a corpus, built once; `search(query, k)` -> document indices."""

    def __init__(self, documents: list[Document]):
        if not documents:
            raise ValueError("corpus: empty, nothing to index")
        self.documents = documents
        self.retriever = bm25s.BM25()
        # The title twice: a page is found by its name before the pages that merely mention it
        # (a field boost, as search engines weight titles).
        texts = [f"{d.title}. {d.title}. {d.text}" for d in documents]
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


AGENT_KINDS = ("reading", "openai", "hf")


@dataclasses.dataclass
class AgentConfig:
    """The search agent whose trajectories tier the distractors."""

    kind: str = "reading"  # reading (question text + search tool, no model) | openai (OpenAI-compatible completions endpoint) | hf (local model)
    top_k_shown: int = 8  # search results shown per query
    top_k_opened: int = 3  # most results opened per search
    endpoint: str = ""  # openai: base URL, e.g. http://vllm-host:8000
    model: str = ""  # openai: the served model name; hf: a directory or hub id
    api_key: str = ""  # llm: bearer token, if the endpoint needs one
    max_turns: int = 6  # search turns before it must answer
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
    if cfg.kind == "reading":
        return ReadingAgent(index, cfg)
    from workloads.longtrace.llm_agent import LLMAgent, make_generate

    return LLMAgent(index, make_generate(cfg), cfg)


STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or the their this to was were what where "
    "which who whom whose with".split())


def content_words(text: str) -> set[str]:
    """Lower-cased words of `text` that carry meaning (stop words and punctuation dropped)."""
    return {w for w in word_list(text) if w not in STOPWORDS}


def mentions(text: str, title: str) -> bool:
    """Whether `text` names `title` as whole words (case-insensitive)."""
    return re.search(rf"(?<![^\W_]){re.escape(title.lower())}(?![^\W_])", text.lower()) is not None


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


class ReadingAgent:
    """A search agent that sees only the question text and the search tool.

    It never receives the question's chain, relations or answer (`run` reads `question.id`
    and `question.question` only; a test swaps the rest for garbage and gets the same
    trajectory). Per turn it searches, then decides what to open from what it has read so
    far: results whose titles are named in the text it is following (the question, then the
    sentence that led it on), ranked by how much of the title is named and how many still-
    needed question words the result's snippet holds. In the entity page it follows, it picks
    a sentence that covers a question word it has not used yet and names something new
    (`_next_sentence` says which), searches for that, and moves to the page whose title the
    sentence names. It stops when no sentence qualifies, answers with the current page's
    title, and cites the pages it followed. Nothing here knows the relation templates: on a
    knowledge graph from TSV it works the same (word overlap between the question and the pages).

    Tier 1 is what it opened and did not cite (look-alike titles, pages sharing the words it
    needed); tier 2 what it was shown and did not open."""

    def __init__(self, index: SearchIndex, cfg: AgentConfig = AgentConfig()):
        self.index, self.cfg = index, cfg

    def run(self, question: Question) -> Trajectory:
        return self.solve(question.id, question.question)

    def solve(self, question_id: str, text: str) -> Trajectory:
        words = word_list(text)
        # Question words still to account for, by position: a word may be needed twice.
        needed = {i: w for i, w in enumerate(words) if w not in STOPWORDS}
        steps: list[Step] = []
        cited: list[str] = []
        query, lead, anchor = text, text, None  # what to search; the text whose names it follows; where it is in the question
        for _ in range(self.cfg.max_turns):
            hits = [self.index.documents[i] for i in self.index.search(query, self.cfg.top_k_shown)]
            opened = self._choose(hits, lead, set(needed.values()), set(cited))
            steps.append(Step(query, [d.id for d in hits], [d.id for d in opened]))
            named = [d for d in opened if mentions(lead, d.title)]
            if not named:
                names = " ".join(re.findall(r"\b[A-Z][^\W_]*", lead))
                if names and names != query:  # reformulate once with the names alone
                    query = names
                    continue
                break  # the page it was after never came up
            current = max(named, key=lambda d: len(d.title))  # the longest name the text gives
            cited.append(current.id)
            if anchor is None:  # the page the question names: its name is accounted for
                anchor = _phrase_position(words, word_list(current.title))
                for word in word_list(current.title):
                    _consume(needed, word, anchor)
            onward = self._next_sentence(current, needed, anchor)
            if onward is None:
                return Trajectory(question_id, steps, current.title, cited)
            sentence, used = onward
            anchor = min((p for p, w in needed.items() if w in used), key=lambda p: abs(p - anchor))
            for word in used:
                _consume(needed, word, anchor)
            lead = sentence
            # Search for what the sentence names beyond the page and the words it covered.
            query = " ".join(w for w in word_list(without(sentence, current.title)) if w not in STOPWORDS and w not in used)
        return Trajectory(question_id, steps, None, cited)

    def _choose(self, hits: list[Document], lead: str, needed: set[str], visited: set[str]) -> list[Document]:
        """The results worth opening, best first: the share of the title the lead names, then
        the needed words in the snippet (the page's first 200 characters)."""
        lead_words = content_words(lead)

        def score(document: Document) -> tuple[float, int]:
            title = content_words(document.title)
            named = len(title & lead_words) / max(1, len(title))
            return named, len(content_words(document.text[:200]) & needed)

        scored = sorted(((score(d), d) for d in hits if d.id not in visited), key=lambda pair: pair[0], reverse=True)
        return [d for key, d in scored if any(key)][: self.cfg.top_k_opened]

    @staticmethod
    def _next_sentence(page: Document, needed: dict[int, str], anchor: int) -> tuple[str, set[str]] | None:
        """The page's sentence to follow, with the needed words it covers: among sentences that
        cover a needed word and name something beyond the page's title and those words, the
        one whose covered word stands nearest, in the question, to where the agent is (a
        relation is phrased next to what it applies to), then one that names the page (a
        statement about it), then the one covering most."""
        wanted = set(needed.values())
        best, best_key = None, None
        for sentence in sentences(page.text):
            words = content_words(without(sentence, page.title))
            used = words & wanted
            if not used or not words - wanted:
                continue
            distance = min(abs(p - anchor) for p, w in needed.items() if w in used)
            key = (distance, not mentions(sentence, page.title), -len(used))  # then sentences about the page itself
            if best_key is None or key < best_key:
                best, best_key = (sentence, used), key
        return best


def without(text: str, title: str) -> str:
    """`text` with every whole-word mention of `title` taken out."""
    return re.sub(rf"(?<![^\W_]){re.escape(title)}(?![^\W_])", " ", text, flags=re.IGNORECASE)


def word_list(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


def _phrase_position(words: list[str], phrase: list[str]) -> int:
    """Where `phrase` starts in `words` (0 if it does not occur)."""
    for i in range(len(words) - len(phrase) + 1):
        if words[i : i + len(phrase)] == phrase:
            return i
    return 0


def _consume(needed: dict[int, str], word: str, anchor: int) -> None:
    """Mark the occurrence of `word` nearest to `anchor` as accounted for."""
    positions = [p for p, w in needed.items() if w == word]
    if positions:
        del needed[min(positions, key=lambda p: abs(p - anchor))]


def parse_agent_output(text: str) -> dict:
    """Search-R1 style tags from an LLM agent; malformed output yields what could be read."""
    found = {tag: [t.strip() for t in re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.S)]
             for tag in ("search", "open", "answer")}
    searches, opens, answers = [t for t in found["search"] if t], [t for t in found["open"] if t], found["answer"]
    return {"searches": searches, "opens": opens,
            "answer": answers[-1] if answers else None,
            "malformed": not answers and not searches and not opens}


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


def context_content(question: str, sections: list[str]) -> str:
    """The reader's user message: instruction, documents, question."""
    return f"{INSTRUCTION}\n\nDocuments:\n" + "\n\n".join(sections) + f"\n\nQuestion: {question}"


class TokenCounter:
    """The reader's tokenizer as the context builder needs it (a `tokenizers.Tokenizer`):
    whole-message counts, and prefixes of a text cut at a token boundary."""

    def __init__(self, backend):
        self.backend = backend

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def prefix(self, text: str, n: int) -> str:
        return self.backend.decode(self.encode(text)[:n])


class Unbuildable(ValueError):
    """A question whose context cannot be built; the message is the skip reason."""


SEPARATOR_TOKENS = 2  # the blank line between sections, as the greedy fill budgets it


def build_context(question: Question, trajectory: Trajectory | None, documents: dict[str, Document],
                  section_tokens: Mapping[str, int], cfg: ContextConfig, seed: int, mode: str,
                  tokens: TokenCounter, doc_ids: list[str] | None = None, dataset_name: str = SYNTHETIC_DATASET) -> dict:
    """A training row whose whole user message (instruction, documents and question) is
    exactly `cfg.budget_tokens` long in the reader's tokens, in every mode: the difficulty
    comparison is between contexts of equal length. Raises `Unbuildable` when it cannot be.

    mode 'tiered': gold + tier 1 + tier 2 + filler; mode 'random': gold + random documents (the
    baseline of the difficulty comparison). Documents are chosen greedily by `section_tokens`
    (every document's section length, `actors.longtrace.section_tokens`); the message is then
    counted whole (merges can span section boundaries) and topped up to the budget with the
    start of one more random document, cut at a token boundary. `doc_ids` (the corpus ids,
    listed once by the caller) is where random filler is drawn from."""
    rng = random.Random(f"{seed}-{question.id}-{mode}")
    render = lambda chosen: context_content(question.question, [section for _, _, section in chosen])  # noqa: E731
    gold = [documents[i] for i in question.gold_doc_ids]
    chosen = [(d, "gold", document_section(d)) for d in gold]
    remaining = cfg.budget_tokens - tokens.count(render(chosen))
    if remaining < 0:
        raise Unbuildable("gold documents exceed the token budget")
    taken = {d.id for d in gold}

    def fill(candidates, tier: str, allowance: int) -> int:
        spent = 0
        for doc_id in candidates:
            if doc_id in taken:
                continue
            cost = section_tokens[doc_id] + SEPARATOR_TOKENS
            if spent + cost > allowance:
                continue
            chosen.append((documents[doc_id], tier, document_section(documents[doc_id])))
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
    chosen = _exactly_to_budget(chosen, render, tokens, cfg.budget_tokens, rng, documents, section_tokens, doc_ids, taken)
    return {
        "source": f"longtrace-{mode}",
        "input_messages": [{"role": "user", "content": render(chosen)}],
        "label": question.label,
        "metadata": {
            "extra_reward_info": {"question": question.question, "rubrics": question.rubrics,
                                  "dataset_name": dataset_name},
            "question_id": question.id,
            "doc_ids": [d.id for d, _, _ in chosen],
            "doc_tiers": [tier for _, tier, _ in chosen],
            "context_tokens": cfg.budget_tokens,
        },
    }


def _exactly_to_budget(chosen: list, render, tokens: TokenCounter, budget: int, rng: random.Random,
                       documents: dict[str, Document], section_tokens: Mapping[str, int], doc_ids: list[str] | None,
                       taken: set[str]) -> list:
    """`chosen` made exactly `budget` tokens long: non-gold documents dropped (last first) while
    it is too long; while it is short, random documents added whole where they fit, and the
    start of one cut at a token boundary to close the last gap."""
    chosen, pool = list(chosen), doc_ids if doc_ids is not None else list(documents)
    for _ in range(64):
        total = tokens.count(render(chosen))
        while total > budget:
            drop = max((i for i, (_, tier, _) in enumerate(chosen) if tier != "gold"), default=None)
            if drop is None:
                raise Unbuildable("gold documents exceed the token budget")
            del chosen[drop]
            total = tokens.count(render(chosen))
        if total == budget:
            return chosen
        gap = budget - total - SEPARATOR_TOKENS
        padding = next((d for d in _random_candidates(rng, pool, taken) if section_tokens[d] > 0), None)
        if padding is None:
            raise Unbuildable("corpus too small to fill the token budget")
        at, section = rng.randrange(len(chosen) + 1), document_section(documents[padding])
        taken.add(padding)
        if section_tokens[padding] <= gap:  # room for all of it
            chosen.insert(at, (documents[padding], "filler", section))
            continue
        cut, tried = gap, set()
        while 1 <= cut <= section_tokens[padding] and cut not in tried:  # a try or two: merges move the count by a token or so
            tried.add(cut)
            trial = chosen[:at] + [(documents[padding], "filler", tokens.prefix(section, cut))] + chosen[at:]
            got = tokens.count(render(trial))
            if got == budget:
                return trial
            cut += budget - got
        # The gap is too small for a piece of this document: free room and try again.
        fillers = [i for i, (_, tier, _) in enumerate(chosen) if tier != "gold"]
        if not fillers:
            raise Unbuildable("could not fill the token budget exactly")
        del chosen[fillers[-1]]
    raise Unbuildable("could not fill the token budget exactly")
