"""A prompt-length check without a tokenizer: reject what is certainly over the model's context.

Why here: the gateway does not tokenize (that is the stock frontend's job), but letting a
multi-megabyte prompt through costs the frontend's tokenizer, the processor's loop and a
worker's admission, and the client got a 500 for it. The rule, cheap and one-sided:

* text (chat ``messages``: every string in them; completions ``prompt``: each string): more
  than ``context_tokens x max_bytes_per_token`` UTF-8 bytes is rejected. Common BPE tokenizers
  average about 4 bytes per token on English text, so at the default 8 such a prompt is about
  twice the context; a prompt under the bound may still be too long, and the engine's exact
  check answers it;
* token-id prompts (completions ``prompt`` as integers): more ids than ``context_tokens``.

``prompt_error`` returns (field, reason) for the 400 answer, or None.
"""

from __future__ import annotations

from typing import Any

_MAX_DEPTH = 64  # deeper nesting is not a chat message; its strings are still counted up to here


def _text_bytes(value: Any, limit: int) -> int:
    """UTF-8 bytes of every string inside ``value``; once over ``limit`` it stops counting
    (and may count characters of the last string, a lower bound, instead of its bytes)."""
    total = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            n = len(v)  # bytes when ASCII, a lower bound otherwise
            if not v.isascii() and total + n <= limit:
                n = len(v.encode("utf-8", "surrogatepass"))
            total += n
            if total > limit:
                return total
        elif depth < _MAX_DEPTH:
            if isinstance(v, dict):
                stack.extend((x, depth + 1) for x in v.values())
            elif isinstance(v, list):
                stack.extend((x, depth + 1) for x in v)
    return total


def _describe(size: int, context_tokens: int, unit: str, limit: int) -> str:
    return (
        f"{size} {unit} is more than a context of {context_tokens} tokens can hold "
        f"(limit {limit} {unit})"
    )


def prompt_error(
    route_field: str, body: dict[str, Any], context_tokens: int, max_bytes_per_token: float
) -> str | None:
    """Why ``body[route_field]`` (``messages`` or ``prompt``) is certainly too long, or None."""
    value = body.get(route_field)
    if value is None:
        return None
    byte_limit = int(context_tokens * max_bytes_per_token)
    if route_field == "prompt" and isinstance(value, list) and value:
        prompts = value if not isinstance(value[0], int) else [value]
        for p in prompts:
            if isinstance(p, list):
                if len(p) > context_tokens:
                    return _describe(len(p), context_tokens, "tokens", context_tokens)
            else:
                size = _text_bytes(p, byte_limit)
                if size > byte_limit:
                    return _describe(size, context_tokens, "bytes of text", byte_limit)
        return None
    size = _text_bytes(value, byte_limit)
    if size > byte_limit:
        return _describe(size, context_tokens, "bytes of text", byte_limit)
    return None
