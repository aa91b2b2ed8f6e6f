"""TRI's repair loop, plain Python: one round at a time over a batch of attempts, so a Ray Data
plan can run each part (verify, infill, regenerate) in its own actor pool.

An `Attempt` is one problem's current trace and what was spent on it. A round:
1. `verify_round`: the verifier judges every step on its own; a solved attempt is done. For an
   unsolved one, ExtractMilestone (`extract_milestone`) scans the `window` steps after the first
   failure for the first that verifies on its own.
2. With a milestone, TRI infills the bridge between the verified prefix P (the steps before the
   failure) and the milestone S (`infill_prompt`, then `apply_infill`): the steps from S on are
   kept. Without one (or under `method="regenerate"`, the baseline), the draft model writes the
   suffix again from P (`regenerate_prompt`, then `apply_regeneration`).
3. Repeat up to `rounds` times; then a last `verify_round` gives the verdict.

Generated tokens are counted per attempt (draft, infills and regenerations alike, eos
included), prompt tokens separately: the comparison the method is about is generated tokens
per solved problem, TRI against regenerating the suffix with the same draft model and the
same number of rounds.

Bad input gives a verdict, never an exception: an empty draft fails at step 0 (no milestone:
regenerated); a milestone that never verifies is never chosen; a prompt longer than the
model's context is refused by the caller and counted as `fallbacks["too long"]`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from workloads.tri.quadruples import lines
from workloads.tri.traces import StepTask, split_steps, verify_traces

METHODS = ("tri", "regenerate")


@dataclasses.dataclass
class Attempt:
    key: str  # the problem's key
    question: str
    method: str = "tri"  # how it is repaired: "tri" or "regenerate" (the baseline)
    trace: str = ""  # the current solution, one step per line
    generated_tokens: int = 0  # every token any model wrote for this problem
    prompt_tokens: int = 0  # every token read as a prompt for it
    first_failure: int = -1  # after the last verify_round; -1: none
    milestone: int = -1  # the step to infill towards; -1: none found
    solved: bool = False
    draft_solved: bool = False  # the first draft was already right
    infills: int = 0
    regenerations: int = 0
    fallbacks: int = 0  # rounds that had to regenerate because no milestone was in the window
    too_long: int = 0  # rounds skipped: the prompt and the generation would not fit the model's context
    checker_errors: int = 0  # steps the verifier could not judge (a sandbox timeout), over all rounds
    action: str = ""  # what this round does to it: "infill", "regenerate" or "" (set by verify_round)

    def steps(self) -> list[str]:
        return split_steps(self.trace)


def extract_milestone(verified: list[bool], first_failure: int, window: int) -> int | None:
    """ExtractMilestone: the first step after `first_failure`, within `window` steps, that
    verifies on its own; None when there is none (the trace ends, or nothing there verifies)."""
    for index in range(first_failure + 1, min(len(verified), first_failure + 1 + window)):
        if verified[index]:
            return index
    return None


def verify_round(task: StepTask, problems: dict, attempts: list[Attempt], window: int) -> None:
    """Judge every attempt's trace; set `solved`, `first_failure`, `milestone` and the next
    `action` under its `method` in place. Steps the checker could not judge count as
    `checker_errors` (they fail: the loop goes on)."""
    verdicts = verify_traces(task, [problems[a.key] for a in attempts], [a.trace for a in attempts])
    for attempt, verdict in zip(attempts, verdicts):
        attempt.checker_errors += verdict.checker_errors
        attempt.solved = verdict.solved
        attempt.first_failure = -1 if verdict.first_failure is None else verdict.first_failure
        found = None if verdict.first_failure is None else extract_milestone(verdict.verified, verdict.first_failure, window)
        attempt.milestone = -1 if found is None else found
        attempt.action = next_action(attempt)


def next_action(attempt: Attempt) -> str:
    """What the next round does to `attempt`: "infill", "regenerate" or "" (solved)."""
    if attempt.solved:
        return ""
    if attempt.method == "tri" and attempt.milestone >= 0:
        return "infill"
    return "regenerate"


def infill_prompt(attempt: Attempt) -> str:
    # imported here: the LM toolkit loads torch, which the verifier's actors never need
    from workloads.lm.infilling import infilling_prompt

    steps = attempt.steps()
    return infilling_prompt(attempt.question, lines(steps[: attempt.first_failure]), steps[attempt.milestone])


def apply_infill(attempt: Attempt, bridge: str, generated: int, prompt: int) -> None:
    """P + the infilled bridge + the steps from the milestone on."""
    steps = attempt.steps()
    attempt.trace = lines(steps[: attempt.first_failure] + split_steps(bridge) + steps[attempt.milestone :])
    attempt.generated_tokens += generated
    attempt.prompt_tokens += prompt
    attempt.infills += 1
    attempt.action = ""


def regenerate_prompt(attempt: Attempt) -> str:
    """The draft model's prompt to continue from the verified prefix."""
    return attempt.question + lines(attempt.steps()[: max(attempt.first_failure, 0)])


def apply_regeneration(attempt: Attempt, suffix: str, generated: int, prompt: int) -> None:
    attempt.trace = lines(attempt.steps()[: max(attempt.first_failure, 0)] + split_steps(suffix))
    attempt.generated_tokens += generated
    attempt.prompt_tokens += prompt
    attempt.regenerations += 1
    attempt.fallbacks += attempt.method == "tri"  # TRI regenerates only when no milestone was found
    attempt.action = ""


def skip_too_long(attempt: Attempt) -> None:
    attempt.too_long += 1
    attempt.action = ""


# prompts -> per prompt (text, generated tokens, prompt tokens), or None when it would not fit the context
Generate = Callable[[list[str]], "list[tuple[str, int, int] | None]"]


def repair_batch(task: StepTask, problems: list, window: int, rounds: int, method: str, write: Generate,
                 infill: Generate, drafts: list[str] | None = None) -> list[Attempt]:
    """The whole loop in one process (the Serve app's requests, the training run's validation
    repair): drafts (`write` on the questions unless given), then up to `rounds` rounds of
    verify -> infill or regenerate, then the verdict. The Ray Data plan runs the same steps, a
    round per actor pool."""
    attempts = [Attempt(p.key, p.prompt, method, action="draft") for p in problems]
    if drafts is None:
        generate_for(write, attempts, lambda a: a.question, set_draft)
    else:
        for attempt, draft in zip(attempts, drafts):
            attempt.trace = draft
    by_key = {p.key: p for p in problems}
    verify_round(task, by_key, attempts, window)
    for attempt in attempts:
        attempt.draft_solved = attempt.solved
    for _ in range(rounds):
        generate_for(infill, [a for a in attempts if a.action == "infill"], infill_prompt, apply_infill)
        generate_for(write, [a for a in attempts if a.action == "regenerate"], regenerate_prompt, apply_regeneration)
        verify_round(task, by_key, attempts, window)
    return attempts


def set_draft(attempt: Attempt, text: str, generated: int, prompt: int) -> None:
    """The first draft: the trace and its tokens."""
    attempt.trace, attempt.generated_tokens, attempt.prompt_tokens, attempt.action = text, generated, prompt, ""


def generate_for(generate: Generate, attempts: list[Attempt], prompt: Callable, apply: Callable) -> None:
    """One batched generation for `attempts` (their `prompt`s), each result `apply`-ed; a
    refused one is counted as too long."""
    if not attempts:
        return
    for attempt, out in zip(attempts, generate([prompt(a) for a in attempts])):
        if out is None:
            skip_too_long(attempt)
        else:
            apply(attempt, *out)


def model_generator(model, tokenizer, max_new_tokens: int, temperature: float, seed: int) -> Generate:
    """A `Generate` from a causal LM: sampled completions, counted; a prompt whose generation
    would not fit the model's context is refused (None)."""
    from workloads.lm import complete_counted, encode_text

    context = model.config.max_position_embeddings
    calls = [0]

    def generate(prompts: list[str]) -> list[tuple[str, int, int] | None]:
        fits = [i for i, p in enumerate(prompts) if len(encode_text(tokenizer, p)) + max_new_tokens <= context]
        out: list[tuple[str, int, int] | None] = [None] * len(prompts)
        if fits:
            calls[0] += 1
            texts, generated, prompt_tokens = complete_counted(model, tokenizer, [prompts[i] for i in fits], max_new_tokens,
                                                               temperature, seed=seed * 7919 + calls[0])
            for i, text, g, p in zip(fits, texts, generated, prompt_tokens):
                out[i] = (text, g, p)
        return out

    return generate


@dataclasses.dataclass
class RepairSummary:
    """What one method did to a set of drafts."""

    accuracy_before: float  # drafts solved as written
    accuracy_after: float
    repair_success: float  # share of the wrong drafts that ended solved
    generated_tokens_per_problem: float  # draft included
    repair_tokens_per_problem: float  # after the draft: what repair itself cost
    prompt_tokens_per_problem: float
    generated_tokens_per_solved: float  # all generated tokens / problems solved (inf when none)
    infills_per_problem: float
    regenerations_per_problem: float
    fallbacks_per_problem: float
    too_long_per_problem: float
    checker_errors_per_problem: float

    def metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}/{name}": value for name, value in dataclasses.asdict(self).items()}


def summarise(attempts: list[Attempt], draft_tokens: dict[str, int]) -> RepairSummary:
    """One method's attempts (one per problem) summarised; `draft_tokens` per problem key."""
    n = len(attempts)
    wrong = [a for a in attempts if not a.draft_solved]
    solved = sum(a.solved for a in attempts)
    generated = sum(a.generated_tokens for a in attempts)
    return RepairSummary(
        accuracy_before=sum(a.draft_solved for a in attempts) / n,
        accuracy_after=solved / n,
        repair_success=sum(a.solved for a in wrong) / len(wrong) if wrong else 1.0,
        generated_tokens_per_problem=generated / n,
        repair_tokens_per_problem=(generated - sum(draft_tokens[a.key] for a in attempts)) / n,
        prompt_tokens_per_problem=sum(a.prompt_tokens for a in attempts) / n,
        generated_tokens_per_solved=generated / solved if solved else float("inf"),
        infills_per_problem=sum(a.infills for a in attempts) / n,
        regenerations_per_problem=sum(a.regenerations for a in attempts) / n,
        fallbacks_per_problem=sum(a.fallbacks for a in attempts) / n,
        too_long_per_problem=sum(a.too_long for a in attempts) / n,
        checker_errors_per_problem=sum(a.checker_errors for a in attempts) / n,
    )
