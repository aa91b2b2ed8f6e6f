"""LongTraceRL: multi-hop questions over a knowledge graph, tiered distractor contexts, and
the rubric reward. `from workloads.longtrace import group_rewards`."""

from workloads.longtrace.reward import grpo_advantages, group_rewards, norm, rubric_score

__all__ = ["group_rewards", "grpo_advantages", "norm", "rubric_score"]
