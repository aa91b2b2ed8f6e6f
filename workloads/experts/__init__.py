"""Experts that label student-visited states with next-token distributions (DistIL).

A `StudentState` is one student rollout: its prompt and completion token ids (student
tokenizer) plus `privileged` text the expert may read and the student never sees (the
reference solution, a verifier's error message). Labelling it returns, for every completion
position j, the expert's top-k next tokens and their log-probs given prompt + completion[:j]:
exactly the k + 1 buckets `workloads.distill.TopKDistribution` trains on.

Experts (one interface: `expert_id`, `top_k`, `label(states)`):
- `OracleExpert`: the exact distribution over correct next tokens given the reference solution
  (privileged): a point mass on the reference; it abstains once the student has left it.
- `RecoveringOracle` (arithmetic): from any state, the distribution over correct continuations
  from that state (the next step from the student's last correct value, the correction of a
  wrong line, several valid next steps); it never abstains, so DAgger's recovery labels exist.
- `HFExpert`: a local causal LM (any directory or hub id); one batched forward pass.
- `EndpointExpert`: an OpenAI-compatible completions endpoint with vLLM's `prompt_logprobs`,
  all states of a batch in one request (the prompt is a list of token-id lists); step
  candidates with `n`, `stop` and a second, scoring request.
`CachedExpert` wraps any of them: repeated states are answered from memory, keyed by
(expert id, state hash), misses are sent in batches.

The student and the expert must share a tokenizer, because labels are token ids. A mismatch
is refused (`TokenizerMismatch`) unless `alignment="text"`: then the expert reads the text,
and its distribution is mapped onto the student's tokens at every position where both
tokenizers start a token (see `HFExpert`).
"""

from __future__ import annotations

from workloads.config import ConfigError
from workloads.experts.cache import CachedExpert
from workloads.experts.endpoint import EndpointExpert, actual_token_logprobs, parse_prompt_logprobs
from workloads.experts.hf import HFExpert
from workloads.experts.oracle import OracleExpert, RecoveringOracle
from workloads.experts.types import (
    Expert,
    ExpertConfig,
    ExpertLabels,
    MalformedExpertResponse,
    StepCandidates,
    StudentState,
    TokenizerMismatch,
    ends_step,
    expert_sequences,
    first_step,
    grouped_candidates,
    privileged_prefix,
)

def require_model(cfg: ExpertConfig) -> str:
    if not cfg.model:
        raise ConfigError("expert.model: kind=hf needs a model directory or hub id here")
    return cfg.model


# kind -> builder(cfg, student tokenizer): a new expert kind is one entry.
EXPERT_KINDS = {
    "oracle": lambda cfg, tokenizer: OracleExpert(tokenizer, cfg.top_k),
    "recovering_oracle": lambda cfg, tokenizer: RecoveringOracle(tokenizer, cfg.top_k),
    "hf": lambda cfg, tokenizer: HFExpert(require_model(cfg), tokenizer, cfg.top_k, cfg.temperature, cfg.alignment),
    "openai": lambda cfg, tokenizer: EndpointExpert(cfg.endpoint, cfg.model, tokenizer, cfg.top_k, cfg.timeout_s,
                                                    cfg.retries, cfg.api_key, cfg.temperature),
}


def build_expert(cfg: ExpertConfig, student_tokenizer) -> Expert:
    """The configured backend (not cached; wrap it in `CachedExpert`)."""
    return EXPERT_KINDS[cfg.kind](cfg, student_tokenizer)


__all__ = [
    "CachedExpert", "EXPERT_KINDS", "EndpointExpert", "Expert", "ExpertConfig", "ExpertLabels", "HFExpert",
    "MalformedExpertResponse", "OracleExpert", "RecoveringOracle", "StepCandidates", "StudentState", "TokenizerMismatch",
    "actual_token_logprobs", "build_expert", "ends_step", "expert_sequences", "first_step", "grouped_candidates",
    "parse_prompt_logprobs", "privileged_prefix",
]
