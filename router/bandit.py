"""Contextual Thompson sampling: per-worker latency corrections on top of the cost model.

The cost model (router/cost.py) predicts latency from loads with priors that are the same
for every worker. Real fleets differ (older GPUs, noisy neighbours, a worker that slows
down mid-run), so for each worker we learn what the model gets wrong:

* Features (standardized by fixed scales so their weights keep one meaning over time):
  ``x = [1, predicted prefill ms / TTFT_SCALE_MS, decode blocks / capacity,
  active requests / ACTIVE_REQUESTS_SCALE]``. The prefill feature is the cost model's own
  prediction (router/cost.py: the request's uncached tokens behind the queued ones, on the
  engine's curve), so its weight is a speed factor: a worker at half speed learns +1 (its
  prefill takes twice the prediction) and carries that to a cold 8k-token prompt along
  the curve, where free per-token slopes fitted on cache hits extrapolate however they
  happened to fit.
* Two heads, each a Bayesian linear regression per worker:
  - TTFT: target = (observed TTFT - model-predicted TTFT) / TTFT_SCALE_MS. The residual is
    kept in ms rather than divided by the prediction: the prefill weight already learns the
    relative speed, the intercept learns fixed overhead, and dividing would blow up on full
    cache hits.
  - ITL: target = observed ms per output token / ITL_SCALE_MS.
  Both targets are centred on a fleet-wide EMA of the same quantity before learning, so a
  worker's correction means "slower/faster than the average worker" and a new worker,
  which starts at the prior (zero correction), is treated as average rather than as the
  possibly miscalibrated prior.
* Posterior: precision ``P = P0 + sum x x^T / s2``, ``b = sum x y / s2``, mean ``P^-1 b``.
  Forgetting discounts the evidence toward the prior on each update
  (``P <- g P + (1-g) P0``, ``b <- g b``) so the learner follows drift; the background sweep
  applies the same discount over idle time so an abandoned worker is eventually retried.
* Decisions sample ``theta = mean + scale * L^-T z`` for all workers at once (one einsum),
  where ``L`` is the Cholesky factor of ``P``. ``L^-T`` and the mean are cached per worker
  and recomputed only when that worker gets feedback, never per decision.
  ``scale = exploration / (1 + latency_sensitivity)``: latency-sensitive calls explore less.

Workers come and go: ``worker_id -> row`` map with a free list; rows are reset to the prior
on removal, so storage is bounded by the number of live workers.

The constants below are the learner's internals: what an operator tunes is only whether it
runs and how much it explores (``AKR_ROUTER_BANDIT_ENABLED``, ``AKR_ROUTER_EXPLORATION``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.linalg import lapack

from router.config import RouterConfig

FEATURES = ("bias", "prefill", "decode_util", "active_req")
DIM = len(FEATURES)
HEADS = ("ttft", "itl")
# Where the speed weight sits (TTFT head, prefill feature): a worker's speed factor is 1 + it.
SPEED_WEIGHT = (HEADS.index("ttft"), FEATURES.index("prefill"))

TTFT_SCALE_MS = 100.0  # unit of the standardized TTFT residual
ITL_SCALE_MS = 10.0  # unit of the standardized ITL residual (ms per output token)
# Prior variance of each regression weight (rows: HEADS, columns: FEATURES), in those units
# per standardized feature: how far a new worker may be from the model. TTFT: +/-14 ms
# fixed, a speed +/-50% off the model's, and +/-14 ms per unit of decode use or of
# ACTIVE_REQUESTS_SCALE requests; ITL: +/-0.7 ms per output token per unit.
PRIOR_VARIANCE = ((0.02, 0.25, 0.02, 0.02), (0.005, 0.005, 0.005, 0.005))
NOISE_VARIANCE = 0.25  # observation noise of a standardized residual
# Per-observation discount of a worker's evidence toward the prior (memory ~ 1/(1-g)
# observations), and per idle second (half-life ~140 s), so a worker that stopped getting
# traffic, e.g. after a slow spell, is retried within minutes.
FORGETTING = 0.995
IDLE_FORGETTING_PER_S = 0.995
RESIDUAL_CLIP = 50.0  # standardized residuals are clipped: one outlier cannot wreck a worker
# The least a learned speed factor scales a worker's decode time by: a posterior mean far
# below -1 (noise on a new worker) must not make its decode load free or negative.
MIN_SPEED_FACTOR = 0.1
BASELINE_EMA = 0.05  # rate of the fleet-average residual the per-worker corrections centre on
ACTIVE_REQUESTS_SCALE = 8.0
# Weight of the learned ITL correction x expected output tokens in the score: 1.0 would
# optimize predicted end-to-end time; less favours TTFT (the agent's critical path) and keeps
# cold-start ITL uncertainty from drowning the cache-overlap signal.
ITL_WEIGHT = 0.1


def make_features(
    prefill_ms: np.ndarray,
    decode_blocks: np.ndarray,
    capacity_blocks: np.ndarray,
    active_requests: np.ndarray,
) -> np.ndarray:
    """Standardized feature matrix, shape (W, DIM), filled column by column in place."""
    x = np.empty((prefill_ms.shape[0], DIM))
    x[:, 0] = 1.0
    np.divide(prefill_ms, TTFT_SCALE_MS, out=x[:, 1])
    np.divide(decode_blocks, np.maximum(capacity_blocks, 1.0), out=x[:, 2])
    np.divide(active_requests, ACTIVE_REQUESTS_SCALE, out=x[:, 3])
    return x


class _Heads:
    """Bayesian linear regressions for every (head, worker row), stored stacked so one
    decision samples both heads for all workers with a handful of numpy calls."""

    def __init__(self, capacity: int, prior_var: np.ndarray, noise_var: float) -> None:
        h = len(HEADS)
        self.prior_var = prior_var  # (H, d)
        self.noise_var = noise_var
        self.p0 = np.eye(DIM)[None] / prior_var[:, None, :]  # (H, d, d), diagonal
        self.precision = np.empty((h, 0, DIM, DIM))
        self.b = np.empty((h, 0, DIM))
        self.mean = np.empty((h, 0, DIM))
        # Cached sampling factor U^-1 with P = U^T U: theta = mean + U^-1 z has cov P^-1.
        self.factor = np.empty((h, 0, DIM, DIM))
        self.count = np.empty((h, 0))  # discounted number of observations (diagnostics)
        self.grow(capacity)

    @property
    def capacity(self) -> int:
        return self.b.shape[1]

    def grow(self, capacity: int) -> None:
        extra = capacity - self.capacity
        h = len(HEADS)
        p0 = np.broadcast_to(self.p0[:, None], (h, extra, DIM, DIM))
        f0 = np.broadcast_to(
            (np.eye(DIM)[None] * np.sqrt(self.prior_var)[:, None, :])[:, None],
            (h, extra, DIM, DIM),
        )
        self.precision = np.concatenate([self.precision, p0], axis=1)
        self.b = np.concatenate([self.b, np.zeros((h, extra, DIM))], axis=1)
        self.mean = np.concatenate([self.mean, np.zeros((h, extra, DIM))], axis=1)
        self.factor = np.concatenate([self.factor, f0], axis=1)
        self.count = np.concatenate([self.count, np.zeros((h, extra))], axis=1)

    def reset(self, row: int) -> None:
        for k in range(len(HEADS)):
            self.precision[k, row] = self.p0[k]
            self.b[k, row] = 0.0
            self.count[k, row] = 0.0
            self.refresh(k, row)

    def refresh(self, k: int, row: int) -> None:
        """Recompute mean and sampling factor of one (head, row): two 5x5 LAPACK calls."""
        u, info = lapack.dpotrf(self.precision[k, row], lower=0)
        if info != 0:  # cannot happen for P0 + PSD terms; guard against NaN feedback
            self.precision[k, row] = self.p0[k]
            self.b[k, row] = 0.0
            u, _ = lapack.dpotrf(self.precision[k, row], lower=0)
        uinv, _ = lapack.dtrtri(u, lower=0)
        self.factor[k, row] = uinv
        self.mean[k, row] = uinv @ (uinv.T @ self.b[k, row])

    def update(self, k: int, row: int, x: np.ndarray, y: float, forgetting: float) -> None:
        p = self.precision[k, row]
        p *= forgetting
        p += (1.0 - forgetting) * self.p0[k] + np.outer(x, x) / self.noise_var
        b = self.b[k, row]
        b *= forgetting
        b += x * (y / self.noise_var)
        self.count[k, row] = forgetting * self.count[k, row] + 1.0
        self.refresh(k, row)

    def decay(self, rows: list[int], factor: float) -> None:
        for k in range(len(HEADS)):
            for r in rows:
                self.precision[k, r] = factor * self.precision[k, r] + (1 - factor) * self.p0[k]
                self.b[k, r] *= factor
                self.count[k, r] *= factor
                self.refresh(k, r)

    def predict(
        self,
        rows: np.ndarray | slice,
        x: np.ndarray,
        scale: float,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(sampled, mean) corrections, shape (H, W), in standardized units."""
        mean = self.mean[:, rows]  # (H, W, d)
        mean_pred = np.einsum("wi,hwi->hw", x, mean)
        if scale <= 0.0:
            return mean_pred, mean_pred
        z = rng.standard_normal(mean.shape)
        # x . (U^-1 z) for every head and worker, in one contraction.
        noise = np.einsum("wi,hwij,hwj->hw", x, self.factor[:, rows], z, optimize=False)
        return mean_pred + scale * noise, mean_pred


class WorkerBandit:
    """Per-worker TTFT and ITL corrections with Thompson sampling."""

    def __init__(self, cfg: RouterConfig, rng: np.random.Generator | None = None) -> None:
        self.cfg = cfg
        self.rng = rng if rng is not None else np.random.default_rng(cfg.seed)
        self._heads = _Heads(8, np.array(PRIOR_VARIANCE), NOISE_VARIANCE)
        self.baseline = {h: 0.0 for h in HEADS}
        self._baseline_n = {h: 0 for h in HEADS}
        self._row: dict[int, int] = {}
        self._free: list[int] = list(range(self._heads.capacity - 1, -1, -1))
        # Cache of the last worker-id array -> rows (the fleet rarely changes); a slice
        # when the rows are contiguous, so sampling reads views instead of copies.
        self._last_ids: tuple[np.dtype, bytes] | None = None
        self._last_rows: np.ndarray | slice = slice(0, 0)

    # ---------------------------------------------------------------- workers
    @property
    def workers(self) -> list[int]:
        return list(self._row)

    def row(self, worker_id: int) -> int:
        r = self._row.get(worker_id)
        if r is None:
            if not self._free:
                old = self._heads.capacity
                self._heads.grow(old * 2)
                self._free = list(range(old * 2 - 1, old - 1, -1))
            r = self._free.pop()
            self._row[worker_id] = r
        return r

    def rows(self, worker_ids: np.ndarray) -> np.ndarray | slice:
        # Compared as raw bytes (+ dtype): much cheaper than np.array_equal per decision.
        key = (worker_ids.dtype, worker_ids.tobytes())
        if key == self._last_ids:
            return self._last_rows
        rows = np.fromiter((self.row(int(w)) for w in worker_ids), dtype=np.intp)
        n = rows.shape[0]
        contiguous = n > 0 and rows[-1] - rows[0] == n - 1 and bool(np.all(np.diff(rows) == 1))
        self._last_ids = key
        self._last_rows = slice(int(rows[0]), int(rows[0]) + n) if contiguous else rows
        return self._last_rows

    def remove(self, worker_id: int) -> None:
        r = self._row.pop(worker_id, None)
        if r is None:
            return
        self._heads.reset(r)
        self._free.append(r)
        self._last_ids = None

    # --------------------------------------------------------------- decide
    def sample(
        self,
        worker_ids: np.ndarray,
        x: np.ndarray,
        latency_sensitivity: float = 0.0,
        cold_fraction: float = 1.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(sampled, mean) corrections, shape (H, W) in standardized units; row 0 = TTFT,
        row 1 = ITL (order of ``HEADS``). ``cold_fraction`` (0..1) scales the sampling by
        how much of the prompt no worker has cached: exploring can cost a cache hit."""
        rows = self.rows(worker_ids)
        scale = (
            self.cfg.exploration
            * min(1.0, max(0.0, cold_fraction))
            / (1.0 + max(0.0, latency_sensitivity))
        )
        return self._heads.predict(rows, x, scale, self.rng)

    # --------------------------------------------------------------- learn
    def update(self, worker_id: int, x: np.ndarray, head: str, y: float) -> float | None:
        """Learn one standardized observation ``y`` (before centring) for ``worker_id``.

        Returns the centred, clipped target actually learned, or None when the worker is
        not tracked (removed since the decision: late feedback must not resurrect it)."""
        row = self._row.get(worker_id)
        if row is None:
            return None
        y = float(y)
        # NaN/inf from a broken measurement: ignore rather than poison the posterior. Checked
        # before the clip, which would turn NaN into -RESIDUAL_CLIP (max(-c, nan) is -c).
        if not math.isfinite(y):
            return None
        y = min(RESIDUAL_CLIP, max(-RESIDUAL_CLIP, y))
        # Warm-up: plain mean for the first observations, then an EMA.
        n = self._baseline_n[head] + 1
        self._baseline_n[head] = n
        rate = max(BASELINE_EMA, 1.0 / n)
        target = y - self.baseline[head]
        self.baseline[head] += rate * (y - self.baseline[head])
        self._heads.update(HEADS.index(head), row, x, target, FORGETTING)
        return target

    def decay(self, factor: float) -> None:
        """Discount every live worker's evidence toward the prior (idle forgetting)."""
        if factor >= 1.0 or not self._row:
            return
        self._heads.decay(list(self._row.values()), factor)

    def mean_correction(self, worker_id: int, x: np.ndarray, head: str) -> float:
        """Posterior-mean correction of one worker (standardized units); 0 if unknown."""
        r = self._row.get(worker_id)
        if r is None:
            return 0.0
        return float(x @ self._heads.mean[HEADS.index(head), r])

    def prefill_ratios(self) -> dict[int, float]:
        """Each tracked worker's learned prefill time over the model's prediction (posterior
        mean; 1 = as predicted, 2 = twice as slow): the speed factor an operator can read."""
        k, j = SPEED_WEIGHT
        means = self._heads.mean
        # list(): one C call, so a metrics thread reading this never sees the dict change
        return {w: 1.0 + float(means[k, r, j]) for w, r in list(self._row.items())}

    def speed_factors(self, worker_ids: np.ndarray) -> np.ndarray:
        """The learned speed factor of each of ``worker_ids`` (the prefill ratio above, floored
        at MIN_SPEED_FACTOR): how much longer than the model this worker takes per token."""
        rows = self.rows(worker_ids)  # first: it may grow the arrays read below
        k, j = SPEED_WEIGHT
        return np.maximum(self._heads.mean[k, rows, j] + 1.0, MIN_SPEED_FACTOR)

    def observations(self, worker_id: int, head: str = "ttft") -> float:
        """Discounted number of observations learned for a worker (diagnostics)."""
        r = self._row.get(worker_id)
        return 0.0 if r is None else float(self._heads.count[HEADS.index(head), r])

    # --------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Plain lists/floats (JSON/msgspec serializable)."""
        hs = self._heads
        workers = {}
        for wid, r in self._row.items():
            workers[str(wid)] = {
                h: {
                    "precision": hs.precision[k, r].tolist(),
                    "b": hs.b[k, r].tolist(),
                    "count": float(hs.count[k, r]),
                }
                for k, h in enumerate(HEADS)
            }
        return {
            "version": 2,
            "features": list(FEATURES),
            "baseline": dict(self.baseline),
            "baseline_n": dict(self._baseline_n),
            "workers": workers,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the learner with a saved one. All or nothing: a state of another version or
        a damaged one raises ValueError before anything is replaced."""
        if (
            not isinstance(state, dict)
            or state.get("version") != 2
            or list(state.get("features", [])) != list(FEATURES)
        ):
            raise ValueError("incompatible bandit state (version or feature set differs)")
        try:
            baseline = {h: _number(state["baseline"].get(h, 0.0)) for h in HEADS}
            baseline_n = {
                h: int(_number(state.get("baseline_n", {}).get(h, 0), 0.0)) for h in HEADS
            }
            workers = {
                int(wid_s): [
                    (
                        _square(heads[h]["precision"]),
                        _vector(heads[h]["b"]),
                        _number(heads[h].get("count", 0.0), 0.0),
                    )
                    for h in HEADS
                ]
                for wid_s, heads in state["workers"].items()
            }
        except (KeyError, TypeError, AttributeError, OverflowError) as exc:
            raise ValueError(f"damaged bandit state: {exc!r}") from exc
        for wid in list(self._row):
            self.remove(wid)
        self.baseline, self._baseline_n = baseline, baseline_n
        hs = self._heads
        for wid, per_head in workers.items():
            r = self.row(wid)
            for k, (precision, b, count) in enumerate(per_head):
                hs.precision[k, r], hs.b[k, r], hs.count[k, r] = precision, b, count
                hs.refresh(k, r)
        self._last_ids = None


def _number(value: Any, least: float = -math.inf) -> float:
    """A saved number, finite and at least ``least`` (json reads NaN and Infinity): a NaN
    baseline poisons every posterior it touches, a negative count divides by zero later."""
    v = float(value)
    if not (math.isfinite(v) and v >= least):
        raise ValueError(f"number {v!r} out of range (finite, >= {least})")
    return v


def _finite(a: np.ndarray) -> np.ndarray:
    """A saved array without NaN or inf, which would make its worker's mean NaN."""
    if not np.isfinite(a).all():
        raise ValueError("non-finite values")
    return a


def _square(values: Any) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.shape != (DIM, DIM):
        raise ValueError(f"precision of shape {a.shape}, expected ({DIM}, {DIM})")
    return _finite(a)


def _vector(values: Any) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.shape != (DIM,):
        raise ValueError(f"vector of shape {a.shape}, expected ({DIM},)")
    return _finite(a)
