"""Knowledge graph, document corpus and multi-hop questions for LongTraceRL.

A knowledge graph is entities (with a type and a description) and typed relations. It comes
from TSV files (`head<TAB>relation<TAB>tail`, `entity<TAB>description`) or from a seeded
generator of a synthetic world (people, cities, countries, companies, universities).

A question is a random walk e0 -r1-> e1 ... -rh-> eh (no revisits; every hop must have a
unique tail, so the answer is determined by the chain), phrased from e0 through nested
relation templates: "In which country is the city where Alice Varo was born located?" Its
gold chain e0..eh gives the rubrics, eh the label, and the chain's documents the gold docs.

Bad input is counted, not fatal: malformed TSV lines, entities without documents and walks
that cannot reach the minimum length are skipped with their reason (`Skips`).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import ClassVar

from workloads.config import require

# relation -> (head type, tail type, fact sentence, noun phrase for "the <tail> of <x>")
RELATIONS: dict[str, tuple[str, str, str, str]] = {
    "born_in": ("person", "city", "{head} was born in {tail}.", "the city where {x} was born"),
    "works_for": ("person", "company", "{head} works for {tail}.", "the company that {x} works for"),
    "studied_at": ("person", "university", "{head} studied at {tail}.", "the university where {x} studied"),
    "headquartered_in": ("company", "city", "{head} is headquartered in {tail}.", "the city where {x} is headquartered"),
    "founded_by": ("company", "person", "{head} was founded by {tail}.", "the person who founded {x}"),
    "located_in": ("city", "country", "{head} is located in {tail}.", "the country in which {x} is located"),
    "campus_in": ("university", "city", "{head} has its campus in {tail}.", "the city where {x} has its campus"),
    "capital": ("country", "city", "The capital of {head} is {tail}.", "the capital of {x}"),
}
GENERIC_FACT = "{head} {relation} {tail}."
GENERIC_PHRASE = "the entity that {x} {relation}"
SYLLABLES = ["ka", "lo", "mi", "ra", "ve", "to", "sa", "ne", "ri", "ba", "du", "fe", "go", "hi", "ju", "ze", "qu", "ol", "an", "is"]


SYNTHETIC_DATASET = "longtrace-synthetic"  # what rows built from the seeded synthetic world name as their source


@dataclasses.dataclass
class KGConfig:
    """The knowledge graph: TSV files, or a seeded synthetic world; the multi-hop questions drawn from it."""

    triples: str = ""  # TSV head<TAB>relation<TAB>tail; empty: the seeded synthetic world
    descriptions: str = ""  # TSV entity<TAB>description
    corpus: str = ""  # JSONL or Parquet with id, title, text; empty: one document per entity
    name: str = ""  # the dataset's name in built rows; empty: the triples file's name, or "synthetic"
    num_people: int = 120  # synthetic world: people
    num_cities: int = 30  # synthetic world: cities
    num_countries: int = 8  # synthetic world: countries
    num_companies: int = 20  # synthetic world: companies
    num_universities: int = 10  # synthetic world: universities
    min_hops: int = 2  # fewest hops per question
    max_hops: int = 3  # most hops per question
    num_questions: int = 200  # questions to build

    section: ClassVar[str] = "kg"

    def validate(self) -> None:
        require(1 <= self.min_hops <= self.max_hops, "min_hops", "need 1 <= min_hops <= max_hops")
        require(self.num_questions >= 1, "num_questions", "must be >= 1")
        require(bool(self.triples) or not self.descriptions, "descriptions", "needs kg.triples too")

    def dataset_name(self) -> str:
        """What built rows name as their source: the triples file's name, or the synthetic world."""
        if self.name or self.triples:
            return f"longtrace-{self.name or Path(self.triples).stem}"
        return SYNTHETIC_DATASET


@dataclasses.dataclass
class KnowledgeGraph:
    entity_type: dict[str, str]
    description: dict[str, str]
    triples: list[tuple[str, str, str]]

    def __post_init__(self):
        self.out_edges: dict[str, list[tuple[str, str]]] = defaultdict(list)
        tails: dict[tuple[str, str], set[str]] = defaultdict(set)
        for head, relation, tail in self.triples:
            self.out_edges[head].append((relation, tail))
            tails[(head, relation)].add(tail)
        self.unique_tail = {key: next(iter(v)) for key, v in tails.items() if len(v) == 1}


@dataclasses.dataclass
class Document:
    id: str
    title: str
    text: str


@dataclasses.dataclass
class Question:
    id: str
    question: str
    label: str
    chain: list[str]
    relations: list[str]
    gold_doc_ids: list[str]

    @property
    def rubrics(self) -> list[str]:
        return list(self.chain)


class Skips(Counter):
    """Reasons something was skipped, counted; a few examples kept for the log."""

    def __init__(self):
        super().__init__()
        self.examples: dict[str, list[str]] = defaultdict(list)

    def add(self, reason: str, example: str = "") -> None:
        self[reason] += 1
        if example and len(self.examples[reason]) < 5:
            self.examples[reason].append(example)


def _name(rng: random.Random, used: set[str], parts: int) -> str:
    """A fresh pronounceable name; words grow longer when short names run out."""
    attempt = 0
    while True:
        longest = 3 + attempt // 20
        words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, longest))).capitalize() for _ in range(parts)]
        name = " ".join(words)
        if name not in used:
            used.add(name)
            return name
        attempt += 1


def synthetic_kg(cfg: KGConfig, seed: int) -> KnowledgeGraph:
    """A seeded world whose relations are functional (one tail per head and relation)."""
    rng = random.Random(seed)
    used: set[str] = set()
    kinds = {"person": (cfg.num_people, 2), "city": (cfg.num_cities, 1), "country": (cfg.num_countries, 1),
             "company": (cfg.num_companies, 1), "university": (cfg.num_universities, 1)}
    suffix = {"company": " Works", "university": " University", "country": "land"}
    entities: dict[str, list[str]] = {}
    for kind, (count, parts) in kinds.items():
        entities[kind] = [_name(rng, used, parts) + suffix.get(kind, "") for _ in range(count)]
    triples = []
    for relation, (head_type, tail_type, _, _) in RELATIONS.items():
        for head in entities[head_type]:
            if relation == "capital":
                continue
            triples.append((head, relation, rng.choice(entities[tail_type])))
    located = {h: t for h, r, t in triples if r == "located_in"}
    for country in entities["country"]:
        cities = [c for c, where in located.items() if where == country]
        if cities:
            triples.append((country, "capital", rng.choice(cities)))
    entity_type = {name: kind for kind, names in entities.items() for name in names}
    descriptions = {name: f"{name} is a {kind}." for name, kind in entity_type.items()}
    return KnowledgeGraph(entity_type, descriptions, triples)


def _read_tsv(path: str, width: int, skips: Skips) -> list[list[str]]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"kg file {path}: not found")
    rows = []
    for number, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = [field.strip() for field in line.split("\t")]
        if len(fields) != width or not all(fields):
            skips.add(f"malformed line in {file.name} (expected {width} tab-separated fields)", f"{path}:{number}")
            continue
        rows.append(fields)
    return rows


def load_kg(cfg: KGConfig, seed: int, skips: Skips) -> KnowledgeGraph:
    if not cfg.triples:
        return synthetic_kg(cfg, seed)
    triples = [tuple(row) for row in _read_tsv(cfg.triples, 3, skips)]
    if not triples:
        raise ValueError(f"kg file {cfg.triples}: no valid triples")
    descriptions = dict(_read_tsv(cfg.descriptions, 2, skips)) if cfg.descriptions else {}
    entity_type = {}
    for head, relation, tail in triples:
        head_type, tail_type = RELATIONS.get(relation, ("entity", "entity", "", ""))[:2]
        entity_type.setdefault(head, head_type)
        entity_type.setdefault(tail, tail_type)
    return KnowledgeGraph(entity_type, descriptions, triples)


def fact_sentence(head: str, relation: str, tail: str) -> str:
    template = RELATIONS[relation][2] if relation in RELATIONS else GENERIC_FACT
    return template.format(head=head, tail=tail, relation=relation.replace("_", " "))


def build_corpus(kg: KnowledgeGraph, cfg: KGConfig, skips: Skips) -> list[Document]:
    """One document per entity (description + its facts), or the configured corpus file."""
    if cfg.corpus:
        return load_corpus(cfg.corpus)
    documents = []
    for index, entity in enumerate(sorted(kg.entity_type)):
        facts = [fact_sentence(entity, r, t) for r, t in kg.out_edges.get(entity, [])]
        description = kg.description.get(entity)
        if description is None and not facts:
            skips.add("entity without a description or facts: no document", entity)
            continue
        text = " ".join(([description] if description else []) + facts)
        documents.append(Document(f"d{index:06d}", entity, text))
    return documents


def load_corpus(path: str) -> list[Document]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"corpus {path}: not found")
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(file).to_pylist()
    else:
        rows = []
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    raise ValueError(f"corpus {path}:{number}: not valid JSON") from None
    documents = []
    for number, row in enumerate(rows, 1):
        missing = {"id", "title", "text"} - set(row)
        if missing:
            raise ValueError(f"corpus {path}: record {number} lacks {sorted(missing)}")
        documents.append(Document(str(row["id"]), str(row["title"]), str(row["text"])))
    if not documents:
        raise ValueError(f"corpus {path}: empty")
    return documents


def phrase(start: str, relations: list[str]) -> str:
    """'In which country is the city where X was born located?' style nesting, generic-safe."""
    text = start
    for relation in relations:
        template = RELATIONS[relation][3] if relation in RELATIONS else GENERIC_PHRASE
        text = template.format(x=text, relation=relation.replace("_", " "))
    return f"What is {text}?"


def generate_questions(kg: KnowledgeGraph, documents: list[Document], cfg: KGConfig, seed: int, skips: Skips) -> list[Question]:
    rng = random.Random(seed + 1)
    doc_of = {d.title: d.id for d in documents}
    starts = sorted(e for e in kg.out_edges if kg.out_edges[e])
    if not starts:
        raise ValueError("kg: no entity has an outgoing relation; no question can be asked")
    questions, seen, attempts = [], set(), 0
    while len(questions) < cfg.num_questions and attempts < 50 * cfg.num_questions:
        attempts += 1
        hops = rng.randint(cfg.min_hops, cfg.max_hops)
        chain, relations = [rng.choice(starts)], []
        while len(relations) < hops:
            options = [(r, t) for r, t in kg.out_edges.get(chain[-1], [])
                       if t not in chain and kg.unique_tail.get((chain[-1], r)) == t]
            if not options:
                break
            relation, tail = rng.choice(options)
            chain.append(tail)
            relations.append(relation)
        if len(relations) < cfg.min_hops:
            skips.add("walk shorter than min_hops (dead end or only revisits)")
            continue
        missing = [e for e in chain if e not in doc_of]
        if missing:
            skips.add("chain entity without a document", missing[0])
            continue
        key = (chain[0], tuple(relations))
        if key in seen:
            continue
        seen.add(key)
        questions.append(Question(f"q{len(questions):05d}", phrase(chain[0], relations), chain[-1], chain,
                                  relations, [doc_of[e] for e in chain]))
    return questions
