"""Search ranges declared on the settings themselves, so the tuner and the docs read one list.

A setting is tunable when its ``Field`` carries ``json_schema_extra=tunable(...)``: a numeric
range (``low``, ``high``, ``log`` scale) or a set of ``choices``; ``optional`` adds "unset" as
a value. Only settings that change a routing decision in the replay should be tunable; the
tuner (``python -m benchmarks.tune``) has no list of its own.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def tunable(
    low: float | None = None,
    high: float | None = None,
    *,
    log: bool = False,
    choices: tuple[Any, ...] | None = None,
    optional: bool = False,
) -> dict[str, Any]:
    """The ``json_schema_extra`` of a tunable setting: a range or a set of choices."""
    if choices is not None:
        if low is not None or high is not None:
            raise ValueError("a tunable setting has either a range or choices, not both")
        return {"tune": {"choices": list(choices)}}
    if low is None or high is None or not low < high:
        raise ValueError(f"a tunable range needs low < high, got {low}..{high}")
    if log and low <= 0:
        raise ValueError(f"a log-scale range must start above 0, got {low}")
    return {"tune": {"low": low, "high": high, "log": log, "optional": optional}}


def search_space(model: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """Setting name -> its declared range, for every tunable field of ``model``."""
    out: dict[str, dict[str, Any]] = {}
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and isinstance(extra.get("tune"), dict):
            out[name] = dict(extra["tune"])
    return out


def describe(spec: dict[str, Any]) -> str:
    """The range as docs/CONFIG.md shows it, e.g. ``0.003-0.1, log`` or ``True/False``."""
    if "choices" in spec:
        return "/".join(str(c) for c in spec["choices"])
    text = f"{spec['low']:g}-{spec['high']:g}"
    if spec.get("log"):
        text += ", log"
    if spec.get("optional"):
        text += ", or unset"
    return text
