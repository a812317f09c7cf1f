"""Load a settings model (``GatewayConfig``, ``ProcessorConfig``, ``RouterConfig``) at start-up.

A bad value must stop the component with one line per bad variable, named as the operator
set it (``AKR_GATEWAY_PORT='abc': Input should be a valid integer ...``), not with a pydantic
traceback that names only the field (``port``). ``load_settings`` raises ``SystemExit`` with
that text, so an entry point prints it to stderr and exits with status 1.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TypeVar
from unittest import mock

from pydantic import ValidationError
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


def describe_errors(
    model: type[BaseSettings], exc: ValidationError, flags: Mapping[str, str] | None = None
) -> str:
    """One line per error: the environment variable (or the command-line flag in ``flags``,
    field name -> flag, when the value came from there), the value and pydantic's reason."""
    prefix = model.model_config.get("env_prefix", "")
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        name = (flags or {}).get(field) or (f"{prefix}{field.upper()}" if field else model.__name__)
        value = err.get("input")
        shown = f"={value!r}" if isinstance(value, str | int | float) else ""
        lines.append(f"  {name}{shown}: {err['msg']}")
    return f"invalid configuration ({model.__name__}):\n" + "\n".join(lines)


def load_settings(
    model: type[S],
    *,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, str] | None = None,
    **overrides: object,
) -> S:
    """``model(**overrides)`` read from the process environment, or from ``environ`` alone
    when given (a launcher checking the variables it will pass); a bad value raises
    ``SystemExit`` naming its variable (see the module docstring)."""
    try:
        if environ is None:
            return model(**overrides)
        with mock.patch.dict(os.environ, environ, clear=True):
            return model(**overrides)
    except ValidationError as exc:
        raise SystemExit(describe_errors(model, exc, flags)) from None
