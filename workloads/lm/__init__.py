"""The one LM toolkit: tiny models and tokenizers (`tiny`), prompt formatting, padding and
devices (`tokens`), log-probs and top-k (`scoring`), generation (`generation`). Every pipeline,
the experts and the Serve `generate` app go through it.
"""

from workloads.lm.generation import (
    Rollouts,
    complete_counted,
    completion_mask,
    generate_ids,
    greedy_complete,
    sample_groups,
    stream_tokens,
)
from workloads.lm.scoring import (
    completion_logits,
    completion_logprobs,
    continuation_logprobs,
    next_token_logprobs,
    top_k_logprobs,
    zero_loss,
)
from workloads.lm.tiny import (
    TOKENIZER_STYLES,
    TinyLMConfig,
    build_tiny_lm,
    build_tokenizer,
    count_parameters,
    load_lm,
    load_tokenizer,
    model_config,
    tiny_lm,
)
from workloads.lm.tokens import bos_ids, device_of, encode_text, format_prompt, forward_logits, pad, position_ids

__all__ = [
    "Rollouts", "TOKENIZER_STYLES", "complete_counted", "TinyLMConfig", "bos_ids", "build_tiny_lm", "build_tokenizer", "completion_logits",
    "completion_logprobs", "completion_mask", "continuation_logprobs", "count_parameters", "device_of", "encode_text",
    "format_prompt", "forward_logits", "generate_ids", "greedy_complete", "load_lm", "load_tokenizer", "model_config",
    "next_token_logprobs", "pad", "position_ids", "sample_groups", "stream_tokens", "tiny_lm", "top_k_logprobs", "zero_loss",
]
