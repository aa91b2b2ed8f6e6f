"""Expert-query actors: any expert behind a Ray actor with its own cache.

    pool = ExpertPool(ExpertConfig(kind="hf", model="./expert"), lm_expert_builder(cfg, student_dir))
    labels = pool.label(states)        # one ExpertLabels per StudentState

`ExpertActor` knows nothing of tokenizers or LMs: it calls a picklable builder that returns an
expert (anything with `expert_id`, `top_k`, `label`, and optionally `candidates`), so a trained
robot policy is an expert the same way an LLM is. `lm_expert_builder` is the builder of the
LLM experts (`workloads.experts`), which read the student's tokenizer.

A state always goes to the same actor (by its hash), so each actor's cache sees every
repeat of the states it owns. `label` waits at most the configured time-out (times the
retries) and raises `ExpertUnavailable` instead of hanging on a dead or stuck expert.
"""

from __future__ import annotations

import functools
import zlib
from typing import Callable, Sequence

import ray

from workloads.endpoints import EndpointError
from workloads.experts import CachedExpert, ExpertConfig, ExpertLabels, StepCandidates, StudentState, build_expert


class ExpertUnavailable(EndpointError):
    """The expert did not label a batch in time or failed doing so."""


def build_lm_expert(cfg: ExpertConfig, student_tokenizer_dir: str):
    from workloads.lm import load_tokenizer

    return build_expert(cfg, load_tokenizer(student_tokenizer_dir))


def lm_expert_builder(cfg: ExpertConfig, student_tokenizer_dir: str) -> Callable[[], object]:
    """The builder of an LLM expert (oracle, hf, openai) for a student whose tokenizer is saved
    in `student_tokenizer_dir`."""
    return functools.partial(build_lm_expert, cfg, student_tokenizer_dir)


@ray.remote
class ExpertActor:
    def __init__(self, build: Callable[[], object], batch_size: int = 32, cache_size: int = 20000):
        import torch

        torch.set_num_threads(1)  # actors share the machine's cores
        self.build, self.batch_size, self.cache_size, self.expert = build, batch_size, cache_size, None

    def start(self) -> str:
        """Build the backend; a configuration problem (a tokenizer mismatch, a missing model)
        surfaces here, in the caller, as the ConfigError it is."""
        if self.expert is None:
            self.expert = CachedExpert(self.build(), self.batch_size, self.cache_size)
        return self.expert.expert.expert_id

    def label(self, states: Sequence[StudentState]) -> list[ExpertLabels]:
        return self.expert.label(states)

    def candidates(self, states: Sequence[StudentState], k: int) -> list[StepCandidates]:
        return self.expert.candidates(states, k)

    def stats(self) -> dict[str, float]:
        return self.expert.stats()


class ExpertPool:
    """`num_actors` expert actors; picklable, so Ray Train workers can query them directly."""

    def __init__(self, cfg: ExpertConfig, build: Callable[[], object]):
        cpus = 1 if cfg.kind == "hf" else 0  # a local model computes; the oracle and an endpoint client barely do
        self.cfg = cfg
        self.actors = [ExpertActor.options(num_cpus=cpus, num_gpus=cfg.num_gpus).remote(build, cfg.batch_size, cfg.cache_size)
                       for _ in range(cfg.num_actors)]
        self.expert_id = ray.get([actor.start.remote() for actor in self.actors])[0]

    @property
    def deadline_s(self) -> float:
        return self.cfg.timeout_s * (self.cfg.retries + 1) + 30.0

    def label(self, states: Sequence[StudentState]) -> list[ExpertLabels]:
        """Token level: top-k + tail at every completion position of every state."""
        return self._ask("label", states)

    def candidates(self, states: Sequence[StudentState], k: int) -> list[StepCandidates]:
        """Step level: K candidate next steps with log-probs per state."""
        return self._ask("candidates", states, k)

    def _ask(self, method: str, states: Sequence[StudentState], *args) -> list:
        """Each state goes to the actor its hash picks (so its cache answers repeats), all actors
        at once; their answers come back in the order of `states`."""
        owner = [zlib.crc32(state.key(self.expert_id, self.cfg.top_k).encode()) % len(self.actors) for state in states]
        refs = {index: getattr(self.actors[index], method).remote([s for s, o in zip(states, owner) if o == index], *args)
                for index in sorted(set(owner))}
        try:
            answers = dict(zip(refs, ray.get(list(refs.values()), timeout=self.deadline_s)))
        except ray.exceptions.GetTimeoutError:
            raise ExpertUnavailable(f"expert {self.expert_id}: no answer within {self.deadline_s:.0f} s") from None
        except EndpointError as exc:  # Ray re-raises the actor's error as its own class; `cause` is the original
            raise ExpertUnavailable(str(getattr(exc, "cause", exc))) from None
        iterators = {index: iter(batch) for index, batch in answers.items()}
        return [next(iterators[o]) for o in owner]

    def stats(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for stats in ray.get([actor.stats.remote() for actor in self.actors]):
            for key, value in stats.items():
                totals[key] = totals.get(key, 0) + value
        return totals
