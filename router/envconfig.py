"""Load a settings model (``GatewayConfig``, ``ProcessorConfig``, ``RouterConfig``) at start-up.

A bad value must stop the component with one line per bad variable, named as the operator
set it (``AKR_GATEWAY_PORT='abc': Input should be a valid integer ...``), not with a pydantic
traceback that names only the field (``port``). ``load_settings`` raises ``SystemExit`` with
that text, so an entry point prints it to stderr and exits with status 1. The same holds for
what only the start can tell: an address a component cannot listen on (``listening``).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
from collections.abc import Iterator, Mapping
from typing import TypeVar

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
    unknown = unknown_variables(model, os.environ if environ is None else environ)
    if unknown:
        raise SystemExit(f"invalid configuration ({model.__name__}):\n" + "\n".join(unknown))
    try:
        if environ is None:
            return model(**overrides)
        with _only(environ):
            return model(**overrides)
    except ValidationError as exc:
        raise SystemExit(describe_errors(model, exc, flags)) from None


def unknown_variables(model: type[BaseSettings], environ: Mapping[str, str]) -> list[str]:
    """One line per variable with the model's prefix that names none of its settings: a typo,
    or a setting a newer version removed, would otherwise leave its default in silence."""
    prefix = model.model_config.get("env_prefix", "")
    if not prefix:
        return []
    known = {f"{prefix}{name.upper()}" for name in model.model_fields}
    lines = []
    for name in sorted(n for n in environ if n.startswith(prefix) and n not in known):
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]}?)" if close else ""
        lines.append(f"  {name}: not a setting{hint}; docs/CONFIG.md lists them")
    return lines


@contextlib.contextmanager
def _only(environ: Mapping[str, str]) -> Iterator[None]:
    """The process environment replaced by ``environ`` for the block (pydantic-settings reads
    ``os.environ``); used before anything else runs, so no thread sees the swap."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def dynamo_path(value: str, parts: int) -> str:
    """``value`` if it is a Dynamo path of ``parts`` names (``namespace.component`` or
    ``namespace.component.endpoint``, ``dyn://`` allowed), else ``ValueError``. Dynamo checks
    a path only when the runtime first uses it: for the processor's own endpoint that is after
    the first worker has loaded, minutes into a GPU start, and then as a traceback."""
    names = value.removeprefix("dyn://").split(".")
    if len(names) != parts or not all(name.strip() for name in names):
        raise ValueError("expected namespace.component" + (".endpoint" if parts == 3 else ""))
    return value


@contextlib.contextmanager
def listening(what: str, host: str, port: int, names: str) -> Iterator[None]:
    """Bind ``host:port`` inside the block: an address that cannot be had (in use, unknown
    host, not allowed) stops the component with one line saying where it came from
    (``names``: the variables or flags), not with the socket's traceback."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise SystemExit(f"{what} cannot listen on {host}:{port} ({names}): {reason}") from None


def configure_logging() -> None:
    """Dynamo's logging, for our Dynamo components (processor, router), once their settings
    are read. Its SGLang part is skipped: it writes a config file into $TMPDIR at every start
    and never removes it, and no SGLang runs in these processes."""
    os.environ.setdefault("DYN_SKIP_SGLANG_LOG_FORMATTING", "1")
    from dynamo.runtime.logging import configure_dynamo_logging

    configure_dynamo_logging()


def parse_no_flags(prog: str, doc: str | None, settings: str, argv: list[str] | None) -> None:
    """Command line of a component configured by environment only: ``--help`` prints its
    docstring and where its settings come from; any other argument is a usage error."""
    argparse.ArgumentParser(
        prog=prog,
        description=doc,
        epilog=f"Settings: {settings} environment variables (docs/CONFIG.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args(argv)
