"""The prompt's tokens in the gateway, as the stock frontend would make them (routing=gateway).

Why: with routing in the gateway, asking the stock frontend for the tokens
(``query_instance_id:``) costs a second HTTP round trip through it, ~3 ms at idle on this
machine (benchmarks/results/idle_path.md). For plain chat bodies the gateway can render the
model's chat template (jinja2, as Hugging Face's ``apply_chat_template`` does) and tokenize
with the same ``tokenizers`` library the frontend uses, then send the tokens as
``nvext.token_data``, so the frontend does not tokenize again.

Safety: only bodies whose rendering cannot depend on anything but roles and text are handled
here (string contents, no tools, no template arguments); everything else goes through the
frontend. And the gateway trusts its own rendering for a model only after its first plain
request of that model came out token for token equal to the frontend's answer
(``Verification``); a mismatch turns it off for that model for good and is logged.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Body fields that never change the rendered prompt; any other field sends the body to the
# frontend's own template (tools, chat_template_kwargs, documents, continue_final_message...).
PLAIN_FIELDS = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options",
    "temperature", "top_p", "top_k", "min_p", "n", "stop", "seed", "ignore_eos", "user",
    "presence_penalty", "frequency_penalty", "repetition_penalty", "min_tokens", "nvext",
    "logprobs", "top_logprobs",
})
PLAIN_NVEXT = frozenset({"annotations", "agent_hints", "cache_control"})
PLAIN_ROLES = frozenset({"system", "user", "assistant"})
MAX_MODELS = 64  # verification verdicts kept (one per model name seen)


def is_plain(body: dict[str, Any]) -> bool:
    """A chat body whose prompt is fixed by roles and string contents alone."""
    if not PLAIN_FIELDS.issuperset(body):
        return False
    nvext = body.get("nvext")
    if nvext is not None and not (isinstance(nvext, dict) and PLAIN_NVEXT.issuperset(nvext)):
        return False
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return False
    for m in messages:
        if not (isinstance(m, dict) and len(m) == 2 and m.get("role") in PLAIN_ROLES
                and isinstance(m.get("content"), str)):
            return False
    return True


class PromptTokenizer:
    """One model's chat template and tokenizer, loaded from its model directory."""

    def __init__(self, model_dir: Path) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        from tokenizers import Tokenizer

        config = json.loads((model_dir / "tokenizer_config.json").read_text())
        template = config.get("chat_template")
        if not isinstance(template, str):
            raise ValueError(f"{model_dir}: no chat_template string in tokenizer_config.json")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        self._template = env.from_string(template)
        self._specials = {"bos_token": _token_text(config.get("bos_token")),
                          "eos_token": _token_text(config.get("eos_token"))}
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))

    def render(self, messages: list[dict[str, str]]) -> str:
        return self._template.render(messages=messages, add_generation_prompt=True,
                                     **self._specials)

    def encode(self, text: str) -> list[int]:
        """Tokens of a rendered prompt (releases the GIL: callable from a worker thread)."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids


class Verification:
    """Per model: None = not yet compared with the frontend, then True/False for good."""

    def __init__(self) -> None:
        self.verdicts: dict[str, bool] = {}
        self.mismatches = 0

    def state(self, model: str) -> bool | None:
        return self.verdicts.get(model)

    def record(self, model: str, ours: list[int], frontend: list[int]) -> None:
        if model in self.verdicts or len(self.verdicts) >= MAX_MODELS:
            return
        same = ours == frontend
        self.verdicts[model] = same
        if not same:
            self.mismatches += 1
            at = next((i for i, (a, b) in enumerate(zip(ours, frontend)) if a != b),
                      min(len(ours), len(frontend)))
            log.warning("gateway tokenization of model %r differs from the frontend's at token "
                        "%d (%d vs %d tokens): asking the frontend from now on", model[:100], at,
                        len(ours), len(frontend))


def _token_text(value: Any) -> str:
    """``bos_token``/``eos_token`` as tokenizer_config.json gives them (str or AddedToken)."""
    if isinstance(value, dict):
        return str(value.get("content") or "")
    return value if isinstance(value, str) else ""
