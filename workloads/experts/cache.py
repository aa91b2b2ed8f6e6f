"""Answers repeated states from memory, for any expert."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from workloads.experts.types import Expert, ExpertLabels, StepCandidates, StudentState


class CachedExpert:
    """Answer repeated states from memory (LRU by state hash); send misses in batches."""

    def __init__(self, expert: Expert, batch_size: int = 32, capacity: int = 20000):
        self.expert, self.batch_size, self.capacity = expert, batch_size, capacity
        self.cache: OrderedDict[str, ExpertLabels | StepCandidates] = OrderedDict()
        self.hits = self.misses = self.positions = 0

    def label(self, states: Sequence[StudentState]) -> list[ExpertLabels]:
        keys = [state.key(self.expert.expert_id, self.expert.top_k) for state in states]
        return self._answer(keys, states, self._label_misses)

    def _label_misses(self, states: Sequence[StudentState]) -> list[ExpertLabels]:
        labels = self.expert.label(states)
        self.positions += sum(len(label.valid) for label in labels)
        return labels

    def candidates(self, states: Sequence[StudentState], k: int) -> list[StepCandidates]:
        """Step candidates, cached like labels (under keys of their own)."""
        keys = ["step:" + state.key(self.expert.expert_id, k) for state in states]
        return self._answer(keys, states, lambda chunk: self.expert.candidates(chunk, k))

    def _answer(self, keys: list[str], states: Sequence[StudentState], ask) -> list:
        """Hits from the cache (and repeats within the call), misses asked in batches of `batch_size`."""
        missing: dict[str, StudentState] = {}
        found: dict[str, object] = {}
        for key, state in zip(keys, states):
            if key in self.cache:
                self.cache.move_to_end(key)
                found[key] = self.cache[key]
                self.hits += 1
            elif key in missing:
                self.hits += 1
            else:
                missing[key] = state
                self.misses += 1
        pending = list(missing.items())
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start : start + self.batch_size]
            for (key, _), answer in zip(chunk, ask([state for _, state in chunk])):
                found[key] = answer
                if self.capacity:
                    self.cache[key] = answer
        while len(self.cache) > self.capacity:
            self.cache.popitem(last=False)
        return [found[key] for key in keys]

    def stats(self) -> dict[str, float]:
        return {"expert_cache_hits": self.hits, "expert_cache_misses": self.misses, "expert_positions": self.positions}
