"""The one client for OpenAI-compatible completion endpoints (vLLM, the Serve `generate` app):
the LongTraceRL search agent and LLM judge, and DistIL's endpoint expert all go through it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request


class EndpointError(RuntimeError):
    """The endpoint did not answer, refused the request, or answered something unreadable."""


def post_completions(base_url: str, body: dict, timeout_s: float, retries: int, api_key: str = "") -> list[dict]:
    """One OpenAI-compatible `POST {base_url}/v1/completions`; returns its choices (one per prompt).

    Network failures, time-outs and 5xx answers are retried with backoff; a 4xx answer or a
    malformed body is not (neither will heal)."""
    url = base_url.rstrip("/") + "/v1/completions"
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    last_error = None
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, json.dumps(body).encode(), headers),
                                        timeout=timeout_s) as response:
                payload = json.loads(response.read())
            choices = payload["choices"]
            if not isinstance(choices, list) or not choices:
                raise TypeError("choices is not a non-empty list")
            for index, choice in enumerate(choices):
                if not isinstance(choice.get("text"), str):
                    raise TypeError(f"choices[{index}].text is not a string")
            return choices
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                detail = exc.read()[:300].decode(errors="replace")
                raise EndpointError(f"endpoint {url}: refused the request (HTTP {exc.code}: {detail})") from None
            last_error = exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            last_error = exc
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise EndpointError(f"endpoint {url}: malformed completion response ({exc!r})") from None
        if attempt < retries:
            time.sleep(min(2.0, 0.2 * 2**attempt))
    raise EndpointError(f"endpoint {url}: unreachable after {retries + 1} attempts ({last_error})")


def post_completion(base_url: str, body: dict, timeout_s: float, retries: int, api_key: str = "") -> dict:
    """The first choice of `post_completions` (one prompt in, one completion out)."""
    return post_completions(base_url, body, timeout_s, retries, api_key)[0]
