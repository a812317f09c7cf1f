"""Readiness of the path behind the gateway: the stock frontend lists the public models, and the
processor (when its health URL is set) has a routable worker.

Why a probe of its own: a static "healthy" kept a gateway in service while the processor was
dead or had no worker. Why cached: Kubernetes probes every few seconds per pod and monitoring
may poll too; one probe per ``ready_cache_s`` (concurrent callers share it) keeps the cost flat.
The probes use connections of their own, so a gateway whose upstream slots are all taken still
answers its readiness.

The same probes keep the prompt limit of each model (``contexts``): the ``context_window`` the
model list gives, overridden for the processor's model by the ``prompt_limit`` its ``/health``
reports. Why both: the model list shows the context the processor registered at start-up, which
Dynamo 1.6.1 cannot change afterwards (a registered model may change only its taints), while
the processor's ``/health`` follows workers that join later or change. The gateway re-reads
both every ``MODEL_REFRESH_S`` in the background (``Gateway._watch_models``) and on readiness
probes; the request path only looks the model up in ``contexts``. The background reads also
keep the ``akr_gateway_ready`` gauge current where nothing asks ``/ready`` (a single-node
deployment has no readiness probe), so the alert on it does not read a verdict of long ago.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgspec

from frontend.config import GatewayConfig
from frontend.upstream import UpstreamClient, UpstreamError, UpstreamTimeout

PROBE_TIMEOUT_S = 2.0
_decoder = msgspec.json.Decoder()


@dataclass(slots=True)
class Verdict:
    """One readiness answer: ``ready``, a short ``reason`` when not, and what was seen."""

    ready: bool
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        status = "ready" if self.ready else "not_ready"
        if self.ready and self.reason:
            status = self.reason  # ready but degraded
        return {
            "status": status,
            **({"reason": self.reason} if not self.ready else {}),
            **self.detail,
        }


def model_contexts(payload: bytes) -> dict[str, int]:
    """``{model id: context_window}`` from an OpenAI model list (0 = not given)."""
    doc = _decoder.decode(payload)
    out: dict[str, int] = {}
    for m in doc.get("data", []) if isinstance(doc, dict) else []:
        if isinstance(m, dict) and isinstance(m.get("id"), str):
            ctx = m.get("context_window")
            out[m["id"]] = ctx if isinstance(ctx, int) and ctx > 0 else 0
    return out


def _split(url: str) -> tuple[str, str]:
    u = urlsplit(url)
    return f"{u.scheme}://{u.netloc}", (u.path or "/") + (f"?{u.query}" if u.query else "")


class Readiness:
    """Cached readiness probe; ``contexts`` keeps the last model list's context windows."""

    def __init__(self, config: GatewayConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self.frontend = UpstreamClient(
            config.upstream_url, pool_size=2, read_timeout=PROBE_TIMEOUT_S, connect_timeout=1.0
        )
        self.processor: UpstreamClient | None = None
        self.processor_path = "/health"
        if config.processor_health_url:
            base, self.processor_path = _split(config.processor_health_url)
            self.processor = UpstreamClient(
                base, pool_size=2, read_timeout=PROBE_TIMEOUT_S, connect_timeout=1.0
            )
        self.contexts: dict[str, int] = {}  # the limits in force: the two below, merged
        self._listed: dict[str, int] = {}  # the model list's context windows
        self._live: tuple[str, int] | None = None  # the processor's (model, prompt_limit)
        self.processor_status: str | None = None  # last processor verdict ("no_workers"...)
        self._last: tuple[float, Verdict] | None = None
        self._probe: asyncio.Task[Verdict] | None = None

    async def check(self) -> Verdict:
        """The cached verdict if younger than ``ready_cache_s``, else a fresh probe."""
        last = self._last
        if last is not None and self.clock() - last[0] < self.config.ready_cache_s:
            return last[1]
        if self._probe is None:
            self._probe = asyncio.get_running_loop().create_task(self._run())
        probe = self._probe
        return await asyncio.shield(probe)

    async def _run(self) -> Verdict:
        try:
            verdict = await self.probe()
        finally:
            self._probe = None
        self._last = (self.clock(), verdict)
        return verdict

    async def probe(self) -> Verdict:
        frontend = await self._probe_models()
        if not frontend.ready or self.processor is None:
            return frontend
        proc = await self._probe_processor()
        proc.detail = {**frontend.detail, **proc.detail}
        return proc

    async def refresh_models(self) -> Verdict:
        """Re-read the model list and the processor's prompt limit (the processor is asked
        even when the model list fails); the readiness verdict these probes give."""
        frontend = await self._probe_models()
        if self.processor is None:
            return frontend
        proc = await self._probe_processor()
        if not frontend.ready:
            return frontend
        proc.detail = {**frontend.detail, **proc.detail}
        return proc

    async def _get(self, client: UpstreamClient, path: str) -> tuple[int, bytes]:
        up = await client.request("GET", path)
        try:
            return up.status, await up.read()
        finally:
            up.close()

    async def _probe_models(self) -> Verdict:
        try:
            status, payload = await self._get(self.frontend, "/v1/models")
        except (UpstreamError, UpstreamTimeout) as e:
            return Verdict(False, "frontend_unreachable", {"error": str(e)[:200]})
        if status != 200:
            return Verdict(False, "frontend_unhealthy", {"frontend_status": status})
        try:
            contexts = model_contexts(payload)
        except (msgspec.DecodeError, TypeError):
            return Verdict(False, "frontend_unhealthy", {"error": "unreadable model list"})
        self._listed = contexts
        self._merge_limits()
        wanted = self.config.public_models or list(contexts)
        missing = [m for m in wanted if m not in contexts]
        if not wanted or missing:
            return Verdict(False, "model_not_listed", {"missing": missing})
        return Verdict(True, "", {"models": wanted})

    async def _probe_processor(self) -> Verdict:
        assert self.processor is not None
        try:
            status, payload = await self._get(self.processor, self.processor_path)
        except (UpstreamError, UpstreamTimeout) as e:
            self.processor_status = "unreachable"
            return Verdict(False, "processor_unreachable", {"error": str(e)[:200]})
        try:
            doc = _decoder.decode(payload) if payload.startswith(b"{") else {}
        except msgspec.DecodeError:
            doc = {}
        doc = doc if isinstance(doc, dict) else {}
        model, limit = doc.get("model"), doc.get("prompt_limit")
        if isinstance(model, str) and type(limit) is int and limit > 0:
            self._live = (model, limit)
        else:  # none stated (starting, or no card states one): the model list's
            self._live = None
        self._merge_limits()
        seen = {k: doc[k] for k in ("routable_workers", "expected_workers") if k in doc}
        self.processor_status = str(doc.get("status") or ("ready" if status == 200 else status))
        if status == 200:  # "degraded" (a worker lost, others serve) stays ready
            return Verdict(True, "degraded" if doc.get("status") == "degraded" else "", seen)
        # Any other answer is not ready, whatever it last counted: a processor whose loop has
        # stalled still reports its last routable workers.
        return Verdict(False, str(doc.get("status") or "processor_unhealthy"), seen)

    def _merge_limits(self) -> None:
        """``contexts`` from the model list and the processor's live limit (which wins)."""
        live = {self._live[0]: self._live[1]} if self._live is not None else {}
        self.contexts = {**self._listed, **live}

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self.frontend.close()
        if self.processor is not None:
            await self.processor.close()
