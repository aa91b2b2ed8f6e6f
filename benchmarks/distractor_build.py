"""LongTraceRL context construction: Ray Data actor pools versus a plain loop, and BM25 latency.

    python -m benchmarks.distractor_build [--questions 48000] [--corpus-docs 100000] [--repeats 2]

The same job, questions in and Parquet out, with the same agent and context builder (tiered
and random contexts per question): (a) a plain single-process loop, (b) `Dataset.map_batches`
over 1 and 2 `ContextBuilder` actors, each writing its Parquet as it goes, exactly as
`pipelines.longtrace_data` runs it (`actors.longtrace.write_contexts`). Contexts/s of each over
the whole run, the best of `--repeats` runs, actor start-up and Parquet writing included (the
BM25 index and the section token counts are built once beforehand and shared, as the pipeline
does). Then BM25 query latency p50/p99 on a generated 100k-document corpus. Target: >= 1.5x the
plain loop with 2 actors on 2 cores.

Start-up (until the first builder call begins: worker processes start and import Ray Data,
pandas and pyarrow, the index is fetched) is a fixed cost of about 3 s per build on 2 cores,
shown in its own column. The default of 48000 questions is a build of about a minute, where it
is a small share, as in a real build; `--questions 12000` shows a small build paying for it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from workloads.config import to_dict
from workloads.longtrace.kg import Document, KGConfig, Skips, build_corpus, generate_questions, synthetic_kg
from workloads.longtrace.search import (
    AgentConfig,
    ContextConfig,
    ReadingAgent,
    SearchIndex,
    TokenCounter,
    Unbuildable,
    build_context,
)

# A corpus of about 40k documents, so that search costs what it does on real corpora.
WORLD = KGConfig(num_people=30000, num_cities=3000, num_countries=100, num_companies=5000, num_universities=1000)


@dataclasses.dataclass
class Measured:
    rate: float  # contexts/s over the whole run
    startup_s: float | None = None  # until the first builder call began (actors only)
    utilisation: float | None = None  # the builders' share of their time spent building

    def row(self, name: str, plain_rate: float) -> str:
        startup = "-" if self.startup_s is None else f"{self.startup_s:.1f}s"
        busy = "-" if self.utilisation is None else f"{self.utilisation:.0%}"
        return f"  {name:24s} {self.rate:10.1f} {self.rate / plain_rate:8.2f}x {startup:>9s} {busy:>12s}"


def fastest(runs) -> Measured:
    return max(runs, key=lambda measured: measured.rate)


def plain_loop(questions, index: SearchIndex, section_tokens: dict[str, int], tokenizer: str, output: Path) -> Measured:
    """The same job in one process: agent, both contexts, Parquet out."""
    from actors.longtrace import reader_tokenizer

    agent, documents, config = ReadingAgent(index), {d.id: d for d in index.documents}, ContextConfig()
    doc_ids, tokens = list(documents), TokenCounter(reader_tokenizer(tokenizer))
    started = time.perf_counter()
    rows = {"tiered": [], "random": []}
    for question in questions:
        trajectory = agent.run(question)
        for mode in rows:
            try:
                rows[mode].append(build_context(question, trajectory, documents, section_tokens, config, 0, mode, tokens,
                                                doc_ids))
            except Unbuildable:
                pass
    for mode, built in rows.items():
        (output / mode).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(built), output / mode / "part-0.parquet")
    return Measured(sum(map(len, rows.values())) / (time.perf_counter() - started))


def ray_data(questions, index: SearchIndex, section_tokens: dict[str, int], tokenizer: str, actors: int,
             output: Path) -> Measured:
    """What `pipelines.longtrace_data` does: the actor pool building and writing partitioned Parquet."""
    import ray

    from actors.longtrace import write_contexts
    from pipelines.longtrace_data import Config

    corpus_refs = [ray.put(index), ray.put(section_tokens)]
    started = time.perf_counter()
    built = write_contexts(questions, corpus_refs, output, agent=to_dict(AgentConfig()), context=to_dict(ContextConfig()),
                           seed=0, num_actors=actors, batch_size=Config.batch_size, skips=Skips(), tokenizer=tokenizer,
                           dataset_name=KGConfig().dataset_name())
    return Measured(sum(built.rows.values()) / (time.perf_counter() - started), built.startup_seconds,
                    built.builder_utilisation)


def bm25_latency(num_docs: int, queries: int = 300) -> tuple[float, float, float]:
    rng = random.Random(0)
    vocabulary = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(20000)]
    documents = [Document(f"d{i}", f"doc {i}", " ".join(rng.choices(vocabulary, k=60))) for i in range(num_docs)]
    started = time.perf_counter()
    index = SearchIndex(documents)
    build_s = time.perf_counter() - started
    latencies = []
    for _ in range(queries):
        query = " ".join(rng.choices(vocabulary, k=4))
        started = time.perf_counter()
        index.search(query, 10)
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    return statistics.median(latencies), latencies[int(0.99 * len(latencies)) - 1], build_s


def main(argv: list[str] | None = None) -> None:
    from actors.longtrace import section_tokens
    from cluster.connect import connect
    from pipelines.longtrace_data import save_corpus_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=48000)
    parser.add_argument("--corpus-docs", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    skips = Skips()
    world = dataclasses.replace(WORLD, num_questions=args.questions)
    kg = synthetic_kg(world, seed=0)
    documents = build_corpus(kg, world, skips)
    questions = generate_questions(kg, documents, world, 0, skips)
    index = SearchIndex(documents)

    with tempfile.TemporaryDirectory() as scratch:
        # The reader's tokenizer measures the budget, as `pipelines.longtrace_data` saves it.
        tokenizer = save_corpus_tokenizer(documents, questions, 500, Path(scratch) / "tokenizer")
        tokens = section_tokens(documents, tokenizer)  # measured once, like the index: outside every timing
        # Best of --repeats for each: on a shared machine noise only ever slows a run down. The
        # plain loops run before Ray starts, so they do not share the cores with it.
        plain = fastest(plain_loop(questions, index, tokens, tokenizer, Path(scratch) / f"plain{r}")
                        for r in range(args.repeats))
        connect(None, log_to_driver=False)
        one_actor, two_actors = [], []
        for _ in range(args.repeats):
            one_actor.append(ray_data(questions, index, tokens, tokenizer, 1, Path(scratch) / "one"))
            two_actors.append(ray_data(questions, index, tokens, tokenizer, 2, Path(scratch) / "two"))
        one_actor, two_actors = fastest(one_actor), fastest(two_actors)
    p50, p99, build_s = bm25_latency(args.corpus_docs)

    print(f"distractor_build: {len(questions)} questions, {len(documents)} documents, 2 contexts per question, "
          f"best of {args.repeats} runs")
    print(f"  {'':24s} {'contexts/s':>10s} {'vs plain':>9s} {'start-up':>9s} {'actors busy':>12s}")
    for name, measured in [("plain loop (1 process)", plain), ("Ray Data, 1 actor", one_actor),
                           ("Ray Data, 2 actors", two_actors)]:
        print(measured.row(name, plain.rate))
    print(f"  BM25 on {args.corpus_docs} generated documents: index {build_s:.1f} s, query p50 {p50 * 1000:.2f} ms, "
          f"p99 {p99 * 1000:.2f} ms")
    print("  target: >= 1.5x the plain loop with 2 actors")
    print(json.dumps({"benchmark": "distractor_build", "value": round(two_actors.rate, 2), "baseline": round(plain.rate, 2),
                      "ratio": round(two_actors.rate / plain.rate, 3), "unit": "contexts/s"}))


if __name__ == "__main__":
    from benchmarks.distractor_build import main as importable_main  # Ray pickles by reference

    importable_main()
