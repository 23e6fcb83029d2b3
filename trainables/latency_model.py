"""A latency predictor per deployment target, nn-Meter style: a subnet's latency is a sum of
per-kernel costs, fitted on measured subnets, so the search scores a candidate's latency on a
target without running it there.

A family describes an arch as its kernels (``SearchSpace.latency_units(arch)``): a list of
``(kind, size)`` pairs, e.g. ``("attn", macs)`` per active ViT block. The model is linear per
kind: every call of a kernel of kind ``k`` costs ``a_k + b_k x size`` ms, plus one intercept
``c`` per forward pass::

    latency(arch) = c + sum_k (a_k x count_k + b_k x sum_size_k)

``a_k`` is the kernel's fixed cost per call (dispatch, small-tensor overheads: what dominates
tiny models at batch 1), ``b_k`` its cost per unit of size (the throughput of that kind of
kernel on that device). All coefficients are fitted non-negative (``scipy.optimize.nnls``: a
kernel never makes a network faster) on measured ``(units, ms)`` pairs, with every row divided
by its measured latency so the fit minimises RELATIVE error, which is what MAPE and ranking
care about (plain least squares would fit the slowest subnets and ignore the fast ones).

One predictor is one (target device, batch size): the coefficients are what the target's
measurements say, nothing is transferred between targets.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

Units = Sequence[tuple[str, float]]
"""An arch as its kernels: ``(kind, size)`` pairs (``SearchSpace.latency_units``)."""

FORMAT = "raynas.latency-predictor/1"


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def measure_ms(
    model: nn.Module,
    input_shape: Sequence[int],
    batch: int = 1,
    repeats: int = 10,
    warmup: int = 2,
    device: torch.device | str = "cpu",
) -> float:
    """Median wall time (ms) of one forward pass of ``model`` on a random ``(batch,
    *input_shape)`` input, under ``torch.no_grad`` in eval mode, after ``warmup`` untimed
    passes. On CUDA every pass is synchronised before the clock is read. The caller sets the
    thread count (``torch.set_num_threads``): it is part of the target."""
    if repeats < 1 or warmup < 0 or batch < 1:
        raise ValueError(
            f"repeats={repeats}, warmup={warmup}, batch={batch}; allowed: repeats >= 1, "
            "warmup >= 0, batch >= 1"
        )
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.randn(batch, *input_shape, device=device)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(times))


# --------------------------------------------------------------------------------------------
# The predictor
# --------------------------------------------------------------------------------------------


class LatencyPredictor:
    """``latency = intercept + sum_k (per_call[k] x count_k + per_size[k] x sum_size_k)`` ms.

    Build one with :meth:`fit`; store it with :meth:`to_dict` (plain JSON) and read it back
    with :meth:`from_dict`. :meth:`predict` refuses a kernel kind it was not fitted on (its
    cost is unknown, not zero), naming the kind and the known ones.
    """

    def __init__(
        self,
        kinds: Sequence[str],
        intercept: float,
        per_call: Mapping[str, float],
        per_size: Mapping[str, float],
        n: int,
        target: str | None = None,
        fit_mape: float | None = None,
    ) -> None:
        self.kinds = tuple(sorted(kinds))
        missing = [k for k in self.kinds if k not in per_call or k not in per_size]
        if missing:
            raise ValueError(f"coefficients missing for kernel kinds {missing}")
        self.intercept = float(intercept)
        self.per_call = {k: float(per_call[k]) for k in self.kinds}
        self.per_size = {k: float(per_size[k]) for k in self.kinds}
        self.n = int(n)
        self.target = target
        self.fit_mape = fit_mape

    def __repr__(self) -> str:
        return f"LatencyPredictor(target={self.target!r}, kinds={list(self.kinds)}, n={self.n})"

    # ---- fitting ------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls, units_list: Sequence[Units], ms_list: Sequence[float], target: str | None = None
    ) -> LatencyPredictor:
        """Fit on measured subnets: ``units_list[i]`` (kernels of subnet i) took
        ``ms_list[i]`` ms. Non-negative least squares on relative residuals."""
        from scipy.optimize import nnls

        if len(units_list) != len(ms_list):
            raise ValueError(
                f"{len(units_list)} unit lists but {len(ms_list)} latencies; allowed: one "
                "latency per subnet"
            )
        if not units_list:
            raise ValueError("no measured subnets to fit on; allowed: at least one")
        ms = np.asarray(ms_list, dtype=float)
        if not np.all(np.isfinite(ms)) or np.any(ms <= 0):
            raise ValueError("latencies must be finite and > 0 ms")
        kinds = sorted({kind for units in units_list for kind, _ in _checked(units)})
        x = np.stack([_features(units, kinds) for units in units_list])
        # rows / ms: residuals are relative; columns / their scale: nnls is well conditioned
        a = x / ms[:, None]
        scale = np.abs(a).max(axis=0)
        scale[scale == 0] = 1.0
        solution, _ = nnls(a / scale, np.ones_like(ms), maxiter=50 * x.shape[1] + 500)
        coef = solution / scale
        fitted = x @ coef
        model = cls(
            kinds,
            intercept=coef[0],
            per_call={k: coef[1 + 2 * i] for i, k in enumerate(kinds)},
            per_size={k: coef[2 + 2 * i] for i, k in enumerate(kinds)},
            n=len(ms),
            target=target,
            fit_mape=float(np.mean(np.abs(fitted - ms) / ms) * 100.0),
        )
        return model

    # ---- predicting ---------------------------------------------------------------------------
    def predict(self, units: Units) -> float:
        """Predicted latency (ms) of the subnet whose kernels are ``units``."""
        total = self.intercept
        for kind, size in _checked(units):
            if kind not in self.per_call:
                raise ValueError(
                    f"kernel kind {kind!r} was not in this latency model's fit (target "
                    f"{self.target!r}); known kinds: {list(self.kinds)}"
                )
            total += self.per_call[kind] + self.per_size[kind] * size
        return float(total)

    def predict_many(self, units_list: Sequence[Units]) -> list[float]:
        return [self.predict(u) for u in units_list]

    # ---- plain data ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: the kinds, each kind's per-call and per-size cost, the intercept, how
        many subnets it was fitted on and the target name."""
        return {
            "format": FORMAT,
            "target": self.target,
            "n": self.n,
            "kinds": list(self.kinds),
            "intercept_ms": self.intercept,
            "coefficients": {
                k: {"per_call_ms": self.per_call[k], "per_size_ms": self.per_size[k]}
                for k in self.kinds
            },
            "fit_mape": self.fit_mape,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyPredictor:
        """Inverse of :meth:`to_dict`; ``ValueError`` on anything else."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"not a latency model: format {got!r}; allowed: {FORMAT!r}")
        try:
            kinds = list(data["kinds"])
            coefficients = data["coefficients"]
            if sorted(coefficients) != sorted(kinds):
                raise ValueError(
                    f"coefficients are for {sorted(coefficients)} but kinds are {sorted(kinds)}"
                )
            return cls(
                kinds,
                intercept=float(data["intercept_ms"]),
                per_call={k: float(coefficients[k]["per_call_ms"]) for k in kinds},
                per_size={k: float(coefficients[k]["per_size_ms"]) for k in kinds},
                n=int(data["n"]),
                target=data.get("target"),
                fit_mape=data.get("fit_mape"),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"latency model dict lacks or mistypes {exc}") from None


def _checked(units: Units) -> list[tuple[str, float]]:
    out = []
    for unit in units:
        try:
            kind, size = unit
        except (TypeError, ValueError):
            raise ValueError(f"latency unit {unit!r}; allowed: a (kind, size) pair") from None
        size = float(size)
        if not isinstance(kind, str) or not math.isfinite(size) or size < 0:
            raise ValueError(f"latency unit {unit!r}; allowed: a str kind and a finite size >= 0")
        out.append((kind, size))
    return out


def _features(units: Units, kinds: Sequence[str]) -> np.ndarray:
    """``[1, count_k0, size_k0, count_k1, size_k1, ...]`` of one subnet."""
    index = {k: i for i, k in enumerate(kinds)}
    row = np.zeros(1 + 2 * len(kinds))
    row[0] = 1.0
    for kind, size in _checked(units):
        i = index[kind]
        row[1 + 2 * i] += 1.0
        row[2 + 2 * i] += size
    return row


# --------------------------------------------------------------------------------------------
# Error against measurement
# --------------------------------------------------------------------------------------------


def error_report(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, Any]:
    """How far predictions are from measurements: ``n``, ``mape`` (mean absolute percentage
    error, %), ``kendall_tau`` (rank agreement, tau-b; NaN with fewer than 2 subnets or no
    variation), ``max_abs_pct_error`` (%)."""
    from scipy.stats import kendalltau

    p = np.asarray(predicted, dtype=float)
    m = np.asarray(measured, dtype=float)
    if p.shape != m.shape or p.ndim != 1 or len(p) == 0:
        raise ValueError(
            f"{len(p)} predictions and {len(m)} measurements; allowed: equally many, at least 1"
        )
    if np.any(m <= 0):
        raise ValueError("measured latencies must be > 0")
    ape = np.abs(p - m) / m * 100.0
    tau = float("nan")
    if len(p) >= 2:
        tau = float(kendalltau(p, m).statistic)
    return {
        "n": int(len(p)),
        "mape": float(ape.mean()),
        "kendall_tau": tau,
        "max_abs_pct_error": float(ape.max()),
    }
