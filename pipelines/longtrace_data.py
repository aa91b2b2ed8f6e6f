"""LongTraceRL data construction: KG -> questions -> search agents -> tiered contexts (Parquet).

    python -m pipelines.longtrace_data --set output_dir=DIR [kg.triples=PATH kg.descriptions=PATH]

Recipe: load or generate the knowledge graph, build the corpus and the multi-hop questions
(driver), index the corpus with BM25 once and share it through the object store, then Ray
Data maps the questions over a pool of `ContextBuilder` actors (agent + distractor builder)
and writes, in one streaming pass, `DIR/mode=tiered/*.parquet` (gold + tier 1 + tier 2 +
filler) and `DIR/mode=random/` (gold + random documents to the same budget, for the difficulty
comparison). Everything skipped is counted by reason in MLflow (each builder call reports
what it skipped). Training reads DIR; data is built once.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import ClassVar

from pipelines.launch import RunFields, RunSummary, ending_run, main_for, open_run
from workloads.caching import stable_hash
from workloads.config import ConfigError, require, to_dict
from workloads.longtrace.kg import (
    KGConfig,
    Skips,
    build_corpus,
    generate_questions,
    load_kg,
)
from workloads.longtrace.format import BuildOutcome
from workloads.longtrace.search import AgentConfig, ContextConfig, SearchIndex
from workloads.plots import plot_curves


PIPELINE = "longtrace_data"
KEY_METRIC = "rows_tiered"
QUICKSTART = ["kg.num_questions=100", "num_actors=2"]


@dataclasses.dataclass
class Config(RunFields):
    """LongTraceRL data construction: knowledge graph, search agent, tiered contexts."""

    output_dir: str = "./longtrace_data"  # where the Parquet rows and the tokenizer go
    # The reader's tokenizer (path or hub id) that measures the token budget; empty: a byte-level
    # BPE with `tokenizer_merges` merges learned on the corpus, saved to output_dir/tokenizer
    # for the tiny reader that `pipelines.longtrace` trains.
    tokenizer: str = ""
    tokenizer_merges: int = 500  # BPE merges learned on the corpus
    num_actors: int = 2  # context-builder actors
    # Questions per actor call (and per Parquet file of each mode), capped for small builds
    # (`workloads.longtrace.format.questions_per_call`). Bigger calls spread Ray Data's per-block costs
    # thinner (`python -m benchmarks.distractor_build` measures it).
    batch_size: int = 256
    kg: KGConfig = dataclasses.field(default_factory=KGConfig)
    agent: AgentConfig = dataclasses.field(default_factory=AgentConfig)
    context: ContextConfig = dataclasses.field(default_factory=ContextConfig)

    section: ClassVar[str] = "longtrace_data"

    def validate(self) -> None:
        require(self.num_actors >= 1, "num_actors", "must be >= 1")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.tokenizer_merges >= 0, "tokenizer_merges", "must be >= 0")


def run(config: Config, *, resume: bool = False, parent_run_id: str | None = None, train_callbacks=()) -> RunSummary:
    import ray

    from actors.longtrace import section_tokens, write_contexts

    skips = Skips()
    try:
        kg = load_kg(config.kg, config.seed, skips)
        documents = build_corpus(kg, config.kg, skips)
        questions = generate_questions(kg, documents, config.kg, config.seed, skips)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    if not questions:
        raise ConfigError(f"kg: no question could be generated ({dict(skips)})")
    data_hash = stable_hash(dataclasses.asdict(q) for q in questions)
    run_record, _ = open_run(PIPELINE, config, resume=resume, parent_run_id=parent_run_id, data_hash=data_hash)
    with ending_run(run_record):
        output = Path(config.output_dir).resolve()
        tokenizer = config.tokenizer or save_corpus_tokenizer(documents, questions, config.tokenizer_merges, output / "tokenizer")
        # indexed and measured once, shared by every actor
        corpus_refs = [ray.put(SearchIndex(documents)), ray.put(section_tokens(documents, tokenizer))]
        built = write_contexts(questions, corpus_refs, output, agent=to_dict(config.agent), context=to_dict(config.context),
                               seed=config.seed, num_actors=config.num_actors, batch_size=config.batch_size, skips=skips,
                               tokenizer=tokenizer, dataset_name=config.kg.dataset_name())
        log_outcome(run_record, output, built, skips, len(questions), len(documents))
    return RunSummary(PIPELINE, KEY_METRIC, float(built.rows["tiered"]), run_record.run_id, str(output),
                      extra={"questions": len(questions), "documents": len(documents), "skipped": dict(skips)})


def save_corpus_tokenizer(documents, questions, merges: int, directory: Path) -> str:
    """The tiny reader's tokenizer: byte-level BPE learned on the documents and questions."""
    from workloads.longtrace.search import INSTRUCTION, document_section
    from workloads.lm import build_tokenizer

    texts = [document_section(d) for d in documents] + [q.question for q in questions] + [INSTRUCTION]
    build_tokenizer(texts, merges).save_pretrained(directory)
    return str(directory)


def log_outcome(run_record, output: Path, built: BuildOutcome, skips: Skips, num_questions: int,
                num_documents: int) -> None:
    import pyarrow.dataset as pds

    from workloads.longtrace.format import contexts_dir

    counts = built.rows
    metrics = {"questions": num_questions, "documents": num_documents, **{f"rows_{m}": n for m, n in counts.items()},
               # where a build's time goes: a small build is mostly the actors starting
               "build_seconds": built.seconds, "build_startup_seconds": built.startup_seconds,
               "builder_utilisation": built.builder_utilisation}
    metrics.update({"skipped/" + re.sub(r"[^A-Za-z0-9_ -]+", " ", reason)[:200].strip(): n for reason, n in skips.items()})
    run_record.log_metrics(metrics, step=0)
    run_record.log_yaml({"skipped": dict(skips), "examples": dict(skips.examples)}, "skipped.yaml")
    run_record.log_text("".join(json.dumps(sample) + "\n" for sample in built.samples), "samples.jsonl")
    tier_tokens: dict[str, Counter] = {}
    for mode, count in counts.items():
        if count:  # the first rows written of each mode
            for metadata in pds.dataset(contexts_dir(output, mode)).head(200, columns=["metadata"]).column("metadata").to_pylist():
                tier_tokens.setdefault(mode, Counter()).update(metadata["doc_tiers"])
    order = ["gold", "tier1", "tier2", "filler"]
    if not tier_tokens:
        return  # nothing was built: the skip counts above say why
    with tempfile.TemporaryDirectory() as scratch:
        plot = plot_curves({f"{mode} contexts": {"documents per tier": [(i, counter[t]) for i, t in enumerate(order)]}
                            for mode, counter in tier_tokens.items()},
                           Path(scratch) / "tier_composition.png", "documents per tier (x: gold, tier1, tier2, filler)")
        run_record.log_artifact(plot)


def main(argv: list[str] | None = None) -> int:
    return main_for(PIPELINE, Config, run, argv)


if __name__ == "__main__":
    from pipelines.longtrace_data import (
        main as importable_main,  # Ray pickles by reference
    )

    sys.exit(importable_main())
