"""Fuzz every POST route of a Serve app over real HTTP.

Bad bodies (random bytes, broken or non-object JSON, each field missing or of a wrong type,
unknown fields, strings past their caps, bodies past the size cap) must get a 4xx whose JSON
names what was wrong, never a 5xx, and the app must still answer its valid example after.
Each app registers its routes here with one valid example body; `fuzz_app` takes the app's
name, so a new app is fuzzed by adding its entry to `ROUTES`.

    problems = fuzz_app("http://127.0.0.1:8000", "verifier")   # [] when every answer was right
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

from serving.http import MAX_BODY_BYTES

ROUTES: dict[str, dict[str, dict]] = {
    "verifier": {
        "/verify/python": {"code": "def f(x):\n    return x + 1", "tests": "assert f(1) == 2", "timeout_s": 5},
        "/verify/python/batch": {"jobs": [{"code": "x = 1", "tests": "assert x == 1"}]},
        "/verify/lean": {"header": "", "proof": "theorem t : True := trivial", "statement": "theorem t : True"},
    },
    "generate": {
        "/generate": {"prompt": "Q: 1+1", "max_new_tokens": 2},
        "/v1/completions": {"prompt": "Q: 1+1", "max_tokens": 2},
        "/v1/chat/completions": {"messages": [{"role": "user", "content": "Q: 1+1"}], "max_tokens": 2},
    },
    "policy": {
        "/act": {"observation": [[0.0] * 38], "command": {"speed": 1.0}},
    },
    "repair": {
        "/repair": {"task": "units", "problem": "4 km>hm>dam>m", "draft": "4 km = 40 hm\n40 hm = 400 dam\n", "rounds": 1},
    },
    # Valid bodies name a repository on the server and an adapter it made: the caller passes
    # them (`fuzz_app(..., examples=...)`); these are their shapes.
    "adapter": {
        "/adapt": {"repo": "/path/to/repository.bundle"},
        "/complete": {"adapter": "repository@<head sha>", "prefix": "assert f(1) == ", "max_new_tokens": 4},
    },
}
# Routes whose valid example may legitimately answer something other than 200 on some machines.
VALID_STATUSES = {"/verify/lean": (200, 503)}  # 503: no Lean toolchain configured

WRONG_VALUES = [None, 0, -1, 10**30, 1.5, -1e308, True, "", "text", "\u0000\ud800", [], [1, "a", None], {},
                {"nested": {"deeper": [1]}}]


def bad_bodies(example: dict, seed: int = 0) -> Iterator[tuple[str, bytes, str]]:
    """(label, body, content type) for every kind of bad request built from a valid `example`."""
    rng = random.Random(seed)
    json_type = "application/json"
    for size in (1, 7, 64, 4096):
        yield f"{size} random bytes", rng.randbytes(size), json_type
    for text in (b"", b"{", b"}", b"null", b"[]", b"123", b'"text"', b"true", b"NaN", b'{"a": }',
                 b'{"code": "\xff\xfe"}', b"[" * 100_000 + b"]" * 100_000, b'{"a": ' * 50_000 + b"1" + b"}" * 50_000):
        yield f"not a request: {text[:20]!r}", text, json_type
    valid = json.dumps(example).encode()
    yield "valid JSON sent as text/plain", valid, "text/plain"
    yield "valid JSON as form data", valid, "application/x-www-form-urlencoded"
    for field in example:
        rest = {k: v for k, v in example.items() if k != field}
        yield f"missing {field}", json.dumps(rest).encode(), json_type
        for wrong in WRONG_VALUES:
            yield f"{field} = {wrong!r:.40}", json.dumps({**example, field: wrong}).encode(), json_type
        yield f"{field} too long", json.dumps({**example, field: "x" * 200_001}).encode(), json_type
        if isinstance(example[field], list) and example[field]:
            for wrong in WRONG_VALUES:
                yield f"{field}[0] = {wrong!r:.40}", json.dumps({**example, field: [wrong]}).encode(), json_type
            item = example[field][0]
            if isinstance(item, dict):
                for key in item:
                    for wrong in WRONG_VALUES[:8]:
                        yield f"{field}[0].{key} = {wrong!r:.40}", json.dumps(
                            {**example, field: [{**item, key: wrong}, item]}).encode(), json_type
                yield f"{field}[0] unknown key", json.dumps({**example, field: [{**item, "bogus": 1}]}).encode(), json_type
    yield "unknown field", json.dumps({**example, "bogus_field": 1}).encode(), json_type
    yield "body over the size cap", json.dumps({**example, "padding": "x" * (MAX_BODY_BYTES + 1)}).encode(), json_type


def check_answer(label: str, route: str, response) -> str | None:
    """Why this answer to a bad body is wrong, or None. (Some "bad" bodies are valid requests:
    those may get the route's valid answers.)"""
    if response.status_code >= 500 and response.status_code not in VALID_STATUSES.get(route, ()):
        return f"{route} [{label}]: {response.status_code} {response.text[:200]}"
    if 400 <= response.status_code < 500:
        try:
            error = response.json().get("error")
        except (ValueError, AttributeError):
            return f"{route} [{label}]: {response.status_code} without a JSON error body: {response.text[:200]!r}"
        message = error.get("message") if isinstance(error, dict) else error
        if not message or not isinstance(message, str):
            return f"{route} [{label}]: {response.status_code} whose error names nothing: {response.text[:200]}"
    return None


def fuzz_app(base_url: str, app: str, seed: int = 0, session=None, examples: dict[str, dict] | None = None) -> list[str]:
    """Send every bad body to every route of `app` (valid bodies: `examples` where given, else
    `ROUTES`); the problems found (empty when none)."""
    import requests

    session = session or requests.Session()
    problems = []
    for route, example in {**ROUTES[app], **(examples or {})}.items():
        for label, body, content_type in bad_bodies(example, seed):
            try:
                response = session.post(base_url + route, data=body, headers={"content-type": content_type}, timeout=120)
            except requests.RequestException as exc:
                problems.append(f"{route} [{label}]: no answer ({exc!r})")
                continue
            problem = check_answer(label, route, response)
            if problem:
                problems.append(problem)
        try:
            answer = session.post(base_url + route, json=example, timeout=120)
        except requests.RequestException as exc:
            problems.append(f"{route}: the valid example got no answer after fuzzing ({exc!r})")
            continue
        if answer.status_code not in VALID_STATUSES.get(route, (200,)):
            problems.append(f"{route}: the valid example answered {answer.status_code} after fuzzing: {answer.text[:200]}")
    return problems
