"""Expert-query throughput: the batched expert actor versus one request per state, and the cache.

    python -m benchmarks.expert_query [--states 256] [--rounds 4]

An `ExpertActor` (local Ray, 2 CPUs) wraps the HF expert (the tiny Qwen2, top-8 + tail).
(a) Throughput: the same student states (arithmetic prompts + completions, ~20 positions each)
    labelled through the actor in batches of 32 versus one `label.remote` call per state;
    caching off, so both do every forward pass.
(b) Cache: a GRPO-like workload: `--rounds` rounds, each asking for the labels of 8 samples
    for each of 16 prompts twice (two policy updates per batch), where a confident student
    repeats completions (a few distinct completions per prompt); cache on versus off.
The last line is the JSON record for (a): batched positions/s against per-state positions/s.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time

import ray

from actors.experts import ExpertPool, lm_expert_builder
from cluster.connect import connect
from workloads.arithmetic import generate_splits
from workloads.experts import ExpertConfig, StudentState
from workloads.tasks import TaskConfig
from workloads.lm import TinyLMConfig, build_tiny_lm, encode_text, load_tokenizer


def make_states(tokenizer, count: int, seed: int) -> list[StudentState]:
    problems, _ = generate_splits(TaskConfig(num_train=max(count, 50), num_eval=10), seed)
    rng = random.Random(seed)
    states = []
    for problem in problems[:count]:
        completion = problem.solution if rng.random() < 0.5 else problem.solution.replace("=", "=1", 1)
        prompt = tuple(encode_text(tokenizer, problem.prompt))
        states.append(StudentState(prompt, (*tokenizer.encode(completion, add_special_tokens=False), tokenizer.eos_token_id)))
    return states


def positions(states) -> int:
    return sum(len(s.completion_ids) for s in states)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def grpo_like_rounds(states: list[StudentState], rounds: int, seed: int) -> list[list[StudentState]]:
    """Per round: 16 prompts x 8 samples drawn from 3 distinct completions per prompt, asked twice."""
    rng = random.Random(seed)
    by_prompt: dict[tuple, list[StudentState]] = {}
    for state in states:
        by_prompt.setdefault(state.prompt_ids, []).append(state)
    prompts = list(by_prompt)
    batches = []
    for _ in range(rounds):
        chosen = rng.sample(prompts, 16)
        batch = []
        for prompt in chosen:
            variants = [StudentState(prompt, by_prompt[prompt][0].completion_ids[: cut]) for cut in (6, 10, 40)]
            batch += [rng.choice(variants) for _ in range(8)]
        batches += [batch, batch]  # two policy updates on the same rollouts
    return batches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--states", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    connect(None)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = str(build_tiny_lm(TinyLMConfig(), scratch, seed=0))
        tokenizer = load_tokenizer(model_dir)
        states = make_states(tokenizer, args.states, seed=0)

        uncached_cfg = ExpertConfig(kind="hf", model=model_dir, top_k=8, batch_size=32, cache_size=0)
        uncached = ExpertPool(uncached_cfg, lm_expert_builder(uncached_cfg, model_dir))
        uncached.label(states[:8])  # warm-up: model loaded, first forward done
        batched_s = timed(lambda: uncached.label(states))
        single_s = timed(lambda: [uncached.label([state]) for state in states])

        rounds = grpo_like_rounds(states, args.rounds, seed=1)
        cold_s = timed(lambda: [uncached.label(batch) for batch in rounds])
        cached_cfg = ExpertConfig(kind="hf", model=model_dir, top_k=8, batch_size=32)
        cached = ExpertPool(cached_cfg, lm_expert_builder(cached_cfg, model_dir))
        cached.label(states[:8])
        before = cached.stats()
        warm_s = timed(lambda: [cached.label(batch) for batch in rounds])
        after = cached.stats()
    hits = after["expert_cache_hits"] - before["expert_cache_hits"]
    asked = sum(len(batch) for batch in rounds)

    total = positions(states)
    batched, single = total / batched_s, total / single_s
    workload_positions = sum(positions(batch) for batch in rounds)
    print(f"\nexpert query, HF expert (tiny Qwen2, top-8 + tail) behind one Ray actor; {len(states)} states, {total} positions")
    print(f"{'mode':<40}{'seconds':>10}{'positions/s':>14}")
    print(f"{'one request per state':<40}{single_s:>10.2f}{single:>14.0f}")
    print(f"{'batched (32 states per forward)':<40}{batched_s:>10.2f}{batched:>14.0f}")
    print(f"\nGRPO-like workload: {len(rounds)} label calls, {asked} states asked, {workload_positions} positions")
    print(f"{'cache off':<40}{cold_s:>10.2f}{workload_positions / cold_s:>14.0f}")
    print(f"{'cache on':<40}{warm_s:>10.2f}{workload_positions / warm_s:>14.0f}   hit rate {hits / asked:.2f}, "
          f"speed-up {cold_s / warm_s:.2f}x")
    ray.shutdown()
    print(json.dumps({"benchmark": "expert_query", "value": round(batched, 1), "baseline": round(single, 1),
                      "ratio": round(batched / single, 3), "unit": "positions/s"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
