"""What each tuned router searches, read from the ranges declared on its settings.

``ours``: the tunable fields of ``RouterConfig`` (router/config.py). ``kv``: the tunable knobs
of Dynamo's KV router as the validated port implements them (``KvKnobs``). Both come from
``router.tunable.search_space``; nothing here lists a setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
from pydantic import BaseModel, ValidationError

from benchmarks.replay.cluster import ClusterConfig
from benchmarks.replay.dynamo_kv import KvKnobs
from benchmarks.replay.ours import router_config
from benchmarks.tune.split import TuneInputError
from router.config import RouterConfig
from router.tunable import search_space

ROUTERS = ("ours", "kv")
SET_SUFFIX = "__set"  # the switch of an optional setting ("unset" is one of its values)


@dataclass(frozen=True)
class Space:
    """One router's search: its settings model, the ranges searched, and fixed values."""

    router: str
    model: type[BaseModel]
    ranges: dict[str, dict[str, Any]]
    fixed: dict[str, Any]

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's values of every searched setting (``None`` = unset)."""
        out: dict[str, Any] = {}
        for name, spec in self.ranges.items():
            if "choices" in spec:
                out[name] = trial.suggest_categorical(name, spec["choices"])
                continue
            if spec.get("optional") and not trial.suggest_categorical(
                name + SET_SUFFIX, [False, True]
            ):
                out[name] = None
                continue
            if _is_int(self.model, name):
                out[name] = trial.suggest_int(
                    name, math.ceil(spec["low"]), int(spec["high"]), log=spec["log"]
                )
            else:
                out[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec["log"])
        return out

    def settings(self, params: dict[str, Any]) -> dict[str, Any]:
        """Trial parameters (as Optuna stores them) -> setting values."""
        out: dict[str, Any] = {}
        for name, spec in self.ranges.items():
            if spec.get("optional") and not params.get(name + SET_SUFFIX, True):
                out[name] = None
            elif name in params:
                out[name] = params[name]
        return out

    def default_params(self, defaults: BaseModel) -> dict[str, Any]:
        """The operator's defaults as trial parameters, clipped into the ranges: trial 0."""
        out: dict[str, Any] = {}
        for name, spec in self.ranges.items():
            value = getattr(defaults, name)
            if "choices" in spec:
                out[name] = value
                continue
            if spec.get("optional"):
                out[name + SET_SUFFIX] = value is not None
                if value is None:
                    continue
            out[name] = min(max(value, spec["low"]), spec["high"])
        return out


def _is_int(model: type[BaseModel], name: str) -> bool:
    return model.model_fields[name].annotation is int


def _parse_value(model: type[BaseModel], name: str, raw: str) -> Any:
    try:
        return getattr(model.model_validate({name: raw}), name)
    except ValidationError as e:
        raise TuneInputError(f"--set {name}={raw}: {e.errors()[0]['msg']}") from None


def make_space(
    router: str, only: list[str] | None = None, fixed: dict[str, str] | None = None
) -> Space:
    """The search of ``router``; ``only`` narrows it to some tunable settings, ``fixed`` holds
    settings of the model at a value. Unknown names are a ``TuneInputError``."""
    model: type[BaseModel] = RouterConfig if router == "ours" else KvKnobs
    ranges = search_space(model)
    known = set(model.model_fields)
    for name in only or []:
        if name not in ranges:
            kind = "not tunable" if name in known else "unknown setting"
            raise TuneInputError(
                f"--only {name}: {kind} for {router} (tunable: {', '.join(ranges)})"
            )
    if only:
        ranges = {k: v for k, v in ranges.items() if k in only}
    values: dict[str, Any] = {}
    for name, raw in (fixed or {}).items():
        if name not in known:
            raise TuneInputError(
                f"--set {name}={raw}: unknown setting for {router} (settings: {', '.join(known)})"
            )
        values[name] = _parse_value(model, name, raw)
        ranges.pop(name, None)
    return Space(router, model, ranges, values)


def ours_config(cluster: ClusterConfig, seed: int, values: dict[str, Any]) -> RouterConfig:
    """Our router as deployed (``router_config``: defaults, prefill time calibrated to the
    engine) with ``values`` on top."""
    base = router_config(cluster, seed)
    return base.model_copy(update=values)


def kv_knobs(values: dict[str, Any]) -> KvKnobs:
    """Dynamo's KV router knobs: its defaults with ``values`` on top."""
    return KvKnobs().model_copy(update=values)


def defaults_of(space: Space, cluster: ClusterConfig, seed: int) -> BaseModel:
    """The configuration a run without tuning uses (fixed values included)."""
    if space.router == "ours":
        return ours_config(cluster, seed, space.fixed)
    return kv_knobs(space.fixed)
