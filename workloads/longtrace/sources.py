"""Real knowledge graphs from offline sources, written as the TSV files `kg.triples` and
`kg.descriptions` read (`head<TAB>relation<TAB>tail`, `entity<TAB>description`).

    python -m workloads.longtrace.sources pycountry DIR   # then: rayworks run longtrace_data
        --set kg.triples=DIR/triples.tsv kg.descriptions=DIR/descriptions.tsv

`pycountry` (ISO 3166, shipped inside the PyPI package, no network): every subdivision is
`in_country` its country, and a nested one is `part_of` its parent subdivision, so a question
walks subdivision -> region -> country. Names shared by several subdivisions give a head with
two tails; the question generator skips those walks (a question must have one answer)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

Graph = tuple[list[tuple[str, str, str]], dict[str, str]]  # triples, descriptions


def pycountry_graph() -> Graph:
    import pycountry

    countries = {c.alpha_2: c for c in pycountry.countries}
    subdivisions = {s.code: s for s in pycountry.subdivisions}
    triples, descriptions = [], {}
    for country in countries.values():
        official = getattr(country, "official_name", None)
        descriptions[country.name] = (f"{official}, " if official else "") + \
            f"a country with ISO 3166-1 codes {country.alpha_2}, {country.alpha_3} and {country.numeric}."
    country_names = {c.name for c in countries.values()}
    for code, subdivision in subdivisions.items():
        country = countries.get(subdivision.country_code)
        if country is None or subdivision.name in country_names:
            continue  # a subdivision named like a country (Georgia, Niger) would merge the two entities
        triples.append((subdivision.name, "in_country", country.name))
        parent = subdivisions.get(subdivision.parent_code) if subdivision.parent_code else None
        if parent is not None and parent.name not in country_names:
            triples.append((subdivision.name, "part_of", parent.name))
        descriptions.setdefault(subdivision.name, f"{subdivision.type}, ISO 3166-2 code {code}.")
    return triples, descriptions


SOURCES: dict[str, Callable[[], Graph]] = {"pycountry": pycountry_graph}


def write_tsv(source: str, directory: str | Path) -> tuple[Path, Path]:
    """The source's graph as `DIR/triples.tsv` and `DIR/descriptions.tsv`."""
    if source not in SOURCES:
        raise ValueError(f"source: expected one of {sorted(SOURCES)}, got {source!r}")
    triples, descriptions = SOURCES[source]()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    clean = lambda text: " ".join(text.split())  # noqa: E731  (no tab or newline inside a field)
    triples_path, descriptions_path = directory / "triples.tsv", directory / "descriptions.tsv"
    triples_path.write_text("".join(f"{clean(h)}\t{r}\t{clean(t)}\n" for h, r, t in triples), encoding="utf-8")
    descriptions_path.write_text("".join(f"{clean(e)}\t{clean(d)}\n" for e, d in descriptions.items()), encoding="utf-8")
    return triples_path, descriptions_path


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: python -m workloads.longtrace.sources {{{','.join(SOURCES)}}} DIR")
    for path in write_tsv(sys.argv[1], sys.argv[2]):
        print(path)
