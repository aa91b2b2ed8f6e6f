"""LongTraceRL context construction: Ray Data actor pools versus a plain loop, and BM25 latency.

    python -m benchmarks.distractor_build [--questions 1000] [--corpus-docs 100000]

The same questions go through the same agent + context builder (tiered and random contexts
per question) (a) in a plain single-process loop and (b) through `Dataset.map_batches` over
1 and 2 `ContextBuilder` actors; contexts/s of each, timed from dataset creation to the
materialised result (actor start-up included). Then BM25 query latency p50/p99 on a generated
100k-document corpus. Target: >= 1.5x the plain loop with 2 actors on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import time

from workloads.config import to_dict
from workloads.longtrace.kg import Document, KGConfig, Skips, build_corpus, generate_questions, synthetic_kg
from workloads.longtrace.search import AgentConfig, ContextConfig, HeuristicAgent, SearchIndex, build_context

WORLD = KGConfig(num_people=1500, num_cities=120, num_countries=20, num_companies=150, num_universities=40)


def plain_loop(questions, index: SearchIndex, count_tokens) -> float:
    agent, documents, config = HeuristicAgent(index), {d.id: d for d in index.documents}, ContextConfig()
    started = time.perf_counter()
    built = 0
    for question in questions:
        trajectory = agent.run(question)
        for mode in ("tiered", "random"):
            built += build_context(question, trajectory, documents, count_tokens, config, 0, mode) is not None
    return built / (time.perf_counter() - started)


def ray_data(questions, index: SearchIndex, actors: int) -> float:
    import ray

    from actors.longtrace import ContextBuilder

    index_ref = ray.put(index)
    started = time.perf_counter()
    dataset = ray.data.from_items([{"question": json.dumps(dataclasses.asdict(q))} for q in questions])
    built = dataset.map_batches(
        ContextBuilder, fn_constructor_kwargs={"index_ref": [index_ref], "agent": to_dict(AgentConfig()),
                                               "context": to_dict(ContextConfig()), "tokenizer": "", "seed": 0},
        concurrency=actors, batch_size=32, batch_format="pyarrow", num_cpus=1,
    ).materialize()
    count = built.filter(lambda row: row["skip_reason"] == "").count()
    return count / (time.perf_counter() - started)


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
    from actors.longtrace import token_counter
    from cluster.connect import connect

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=1000)
    parser.add_argument("--corpus-docs", type=int, default=100_000)
    args = parser.parse_args(argv)

    skips = Skips()
    world = dataclasses.replace(WORLD, num_questions=args.questions)
    kg = synthetic_kg(world, seed=0)
    documents = build_corpus(kg, world, skips)
    questions = generate_questions(kg, documents, world, 0, skips)
    index = SearchIndex(documents)

    plain = plain_loop(questions, index, token_counter(""))
    connect(None, log_to_driver=False)
    one_actor = ray_data(questions, index, 1)
    two_actors = ray_data(questions, index, 2)
    p50, p99, build_s = bm25_latency(args.corpus_docs)

    print(f"distractor_build: {len(questions)} questions, {len(documents)} documents, 2 contexts per question")
    rows = [("plain loop (1 process)", plain), ("Ray Data, 1 actor", one_actor), ("Ray Data, 2 actors", two_actors)]
    for name, rate in rows:
        print(f"  {name:24s} {rate:8.1f} contexts/s   {rate / plain:5.2f}x")
    print(f"  BM25 on {args.corpus_docs} generated documents: index {build_s:.1f} s, query p50 {p50 * 1000:.2f} ms, "
          f"p99 {p99 * 1000:.2f} ms")
    print("  target: >= 1.5x the plain loop with 2 actors")
    print(json.dumps({"benchmark": "distractor_build", "value": round(two_actors, 2), "baseline": round(plain, 2),
                      "ratio": round(two_actors / plain, 3), "unit": "contexts/s"}))


if __name__ == "__main__":
    from benchmarks.distractor_build import main as importable_main  # Ray pickles by reference

    importable_main()
