"""The sample's differential as an estimate: calibrated probabilities -> class shares with 95% intervals.

Counting cells by their argmax is biased whenever the sample's mix differs from the training mix:
the classifier's errors land on the classes it confuses, so a model trained on balanced cells
over-reports the rare classes of blood. Estimating class shares is a quantification problem, and
this module holds the field's standard answers, torch-free so firmware can call them:

* ``cc``   classify and count: the argmax count (biased; kept for comparison).
* ``acc``  adjusted classify and count (Forman 2008): solve ``q = C^T p`` for the shares ``p``, with
  ``q`` the argmax shares of the sample and ``C[i, j] = P(predicted j | true i)`` measured on
  held-out cells.
* ``pacc`` probabilistic ACC (Bella et al. 2010): the same with mean posteriors in place of counts.
* ``em``   EM prior adaptation (Saerens, Latinne and Decaestecker 2002): re-weight every cell's
  calibrated posterior by ``p / prior_train`` until the mean posterior equals ``p``.

The adjusted counts are solved as least squares on the probability simplex (``p >= 0``,
``sum p = 1``) with ``scipy.optimize.nnls`` on the system plus one heavily weighted row for the sum,
then renormalised: the solution exists and is a valid mix even when ``C`` is singular or
ill-conditioned (two classes the classifier cannot tell apart get a split of their joint share).

Intervals: percentile bootstrap over the sample's cells and, for ``acc``/``pacc``, over the
classifier's rates (each true class's held-out confusion row redrawn from its Dirichlet posterior
given the counts, Jeffreys prior), so the interval covers both the cell sampling and the
classifier's own measured error. The interval is never narrower than the Wilson interval of the
estimate at the sample's cell count (a percentile bootstrap of a few cells, or of a class seen in
no cell, would otherwise claim certainty it does not have). EM's interval is the bootstrap over
cells (its error model is the calibration, not a confusion matrix).

Pooling the heads: a cell's probability row is pooled from its heads' softmax outputs (the present
heads only, when a light is missing) before calibration. ``log-mean`` (the default since bundles
record ``pooling``) is the renormalised geometric mean, ``softmax(mean_h log p_h)``: a product of
experts, whose temperature-scaled form transferred to new donors far better than the arithmetic
mean's (benchmarks/RESULTS.md, "Counting": EM 88 -> 93 % of shares within a manual count's error on
the packaged bundle); ``mean`` is the graph's own combined output, what older bundles were fitted on.

Calibration: bias-corrected temperature scaling (BCTS; Alexandari, Kundaje and Shrikumar 2020, who
show it is what makes EM prior adaptation work) fits ``softmax(z / T + b)`` on held-out cells. Since
the pooled row is a softmax, ``softmax(z / T) = p ** (1 / T)`` renormalised, which every backend's
head outputs give exactly (``calibrated_probs``): that is what each per-cell result line holds. The
line's class stays the model's own combined output's argmax, the classifier the accuracy gate
measured (the geometric and arithmetic means disagree on 0.2-0.5 % of synthetic cells and 0.5-1 % of
real held-out ones). The class bias ``b`` multiplies every posterior by
``exp(b)``, which is the same as training at the prior ``prior * exp(-b)``: EM uses that effective
prior, so the per-cell probabilities keep the model's labels and EM still sees BCTS posteriors.
Its interval also redraws ``b`` from its Laplace approximation (the inverse Hessian of the held-out
negative log-likelihood), the classifier's calibration error.

The bundle member ``quantification.json`` (``QUANT_MEMBER``, schema ``QUANT_SCHEMA``) holds the
temperatures, the training split's class prior and, per precision, the confusion counts and mean
calibrated posteriors per true class on held-out cells (``measure_quantification`` builds it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from wbc_edge.errors import WbcError

QUANT_MEMBER = "quantification.json"
QUANT_SCHEMA = 2  # 2: rows pooled as "pooling" says; 1 (read as "mean"): before pooling was recorded
READABLE_SCHEMAS = (1, 2)  # a reader that knows only 1 refuses 2 at load instead of misreading its temperature
POOLINGS = ("mean", "log-mean")
DEFAULT_POOLING = "log-mean"  # measured: benchmarks/RESULTS.md, "Counting"
LEGACY_POOLING = "mean"  # a quantification.json without "pooling" was fitted on the graph's mean
METHODS = ("em", "acc", "pacc", "cc")
DEFAULT_METHOD = "em"  # chosen by benchmarks/count.py (benchmarks/RESULTS.md, "Counting")
Z_95 = 1.959963984540054
EM_TOL = 1e-6
EM_MAX_ITER = 1000
N_BOOT = 200
ECE_BINS = 15
_SUM_ROW_WEIGHT = 1e3  # weight of the sum-to-one row in the simplex least squares
_PROB_FLOOR = 1e-12


class QuantificationError(WbcError):
    """Probabilities or quantification parameters are unusable (the message names the run or member)."""


# ---- calibration -----------------------------------------------------------------------------
def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) from softmax probabilities: p ** (1/T), renormalised over the last axis."""
    p = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0:
        return p
    logp = np.log(np.clip(p, _PROB_FLOOR, None)) / float(temperature)
    logp -= logp.max(axis=-1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=-1, keepdims=True)


def pool_heads(head_probs: np.ndarray, pooling: str = DEFAULT_POOLING) -> np.ndarray:
    """One probability row per cell from its heads' softmax rows (n, H, K): their mean, or the
    renormalised geometric mean ("log-mean")."""
    h = np.asarray(head_probs, dtype=np.float64)
    if h.ndim != 3 or h.shape[1] == 0:
        raise QuantificationError(f"pooling heads: expected (cells, heads, classes) probabilities, got shape {h.shape}")
    if pooling == "mean":
        return h.mean(axis=1)
    if pooling != "log-mean":
        raise QuantificationError(f"pooling '{pooling}' is not one of {list(POOLINGS)}")
    logp = np.log(np.clip(h, _PROB_FLOOR, None)).mean(axis=1)
    logp -= logp.max(axis=-1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=-1, keepdims=True)


def member_pooling(d: Mapping[str, Any]) -> str:
    """The pooling a quantification.json (or a results header's copy) was fitted on: its `pooling`
    from schema 2 on; a schema-1 member's temperature was fitted on the heads' arithmetic mean."""
    return str(d.get("pooling", LEGACY_POOLING)) if int(d.get("schema", 1)) >= 2 else LEGACY_POOLING


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    p = np.asarray(probs, dtype=np.float64)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], _PROB_FLOOR, None))))


def fit_temperature(probs: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature minimising the negative log-likelihood of `labels` (scipy, bounded, on log T)."""
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise QuantificationError("temperature scaling: no held-out cells to fit on")
    res = minimize_scalar(lambda log_t: nll(apply_temperature(probs, math.exp(log_t)), labels),
                          bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded", options={"xatol": 1e-5})
    return float(math.exp(res.x))


def fit_bias_corrected_temperature(probs: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """BCTS: (T, b, cov(b)) minimising the NLL of softmax(log p / T + b), b[0] = 0 (scipy L-BFGS-B).

    cov(b) is the Laplace approximation at the fit (T held fixed): the inverse of the NLL's Hessian in b."""
    from scipy.optimize import minimize

    labels = np.asarray(labels, dtype=np.int64)
    n, k = len(labels), np.asarray(probs).shape[1]
    if n == 0:
        raise QuantificationError("bias-corrected temperature scaling: no held-out cells to fit on")
    logp = np.log(np.clip(np.asarray(probs, np.float64), _PROB_FLOOR, None))
    onehot = np.eye(k)[labels]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        inv_t, bias = math.exp(-theta[0]), np.concatenate([[0.0], theta[1:]])
        z = logp * inv_t + bias
        z -= z.max(axis=1, keepdims=True)
        s = np.exp(z)
        s /= s.sum(axis=1, keepdims=True)
        value = -np.mean(np.log(np.clip(s[np.arange(n), labels], _PROB_FLOOR, None)))
        d = (s - onehot) / n  # d loss / d z
        grad_t = -np.sum(d * logp * inv_t)  # d z / d theta0 = -logp / T
        return float(value), np.concatenate([[grad_t], d.sum(axis=0)[1:]])

    res = minimize(loss, np.zeros(k), jac=True, method="L-BFGS-B",
                   bounds=[(math.log(0.05), math.log(20.0))] + [(-10.0, 10.0)] * (k - 1))
    t, bias = math.exp(res.x[0]), np.concatenate([[0.0], res.x[1:]])
    s = apply_class_bias(apply_temperature(probs, t), bias)
    hess = (np.einsum("ij,jk->jk", s, np.eye(k)) - np.einsum("ij,ik->jk", s, s))[1:, 1:]  # sum_i diag(s_i) - s_i s_i^T
    cov = np.zeros((k, k))
    cov[1:, 1:] = np.linalg.pinv(hess)
    return t, bias, cov


def apply_class_bias(probs: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """softmax(z + b) from softmax(z): p * exp(b), renormalised."""
    w = np.asarray(probs, np.float64) * np.exp(np.asarray(bias, np.float64) - np.max(bias))
    return w / w.sum(axis=-1, keepdims=True)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """Expected calibration error (top-label, equal-width bins, Guo et al. 2017) and the diagram's bins."""
    p = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        m = which == b
        if not m.any():
            continue
        acc, mean_conf = float(correct[m].mean()), float(conf[m].mean())
        ece += m.mean() * abs(acc - mean_conf)
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": int(m.sum()), "accuracy": acc, "confidence": mean_conf})
    return {"ece": float(ece), "bins": rows}


# ---- parameters from the bundle --------------------------------------------------------------
@dataclass
class QuantParams:
    """What the estimators need for one precision: training prior, held-out confusion, temperatures."""

    classes: list[str]
    train_prior: np.ndarray  # (K,)
    confusion: np.ndarray  # (K, K) counts, [true][predicted], held-out cells
    mean_posteriors: np.ndarray  # (K, K) mean calibrated posterior per true class, held-out cells
    temperature: float = 1.0  # combined output
    head_temperatures: dict[str, float] = field(default_factory=dict)
    class_bias: np.ndarray | None = None  # BCTS bias b (K,), None = zeros
    class_bias_cov: np.ndarray | None = None  # its Laplace covariance (K, K)
    precision: str = "fp32"
    measured_precision: str = "fp32"  # whose confusion this is (fp32 when the run's precision was not measured)
    pooling: str = LEGACY_POOLING  # how a cell's heads become its probability row before the temperature

    @property
    def row_counts(self) -> np.ndarray:
        return self.confusion.sum(axis=1)

    def rates(self) -> np.ndarray:
        """P(predicted j | true i), Jeffreys-smoothed so a class with no held-out cell gets a uniform row."""
        k = len(self.classes)
        return (self.confusion + 0.5) / (self.row_counts[:, None] + 0.5 * k)

    def bias(self) -> np.ndarray:
        return np.zeros(len(self.classes)) if self.class_bias is None else self.class_bias

    def effective_prior(self, bias: np.ndarray | None = None) -> np.ndarray:
        """The training prior EM divides by: posteriors times exp(b) are posteriors at prior * exp(-b)."""
        w = self.train_prior * np.exp(-(self.bias() if bias is None else bias))
        return w / w.sum()

    def to_header(self) -> dict[str, Any]:
        """The JSON a results file's run header carries, so `summarize` needs no bundle."""
        return {"schema": QUANT_SCHEMA, "classes": list(self.classes), "train_prior": [float(v) for v in self.train_prior],
                "confusion": [[int(v) for v in row] for row in self.confusion],
                "mean_posteriors": [[float(v) for v in row] for row in self.mean_posteriors],
                "temperature": float(self.temperature), "head_temperatures": dict(self.head_temperatures),
                "class_bias": [float(v) for v in self.bias()],
                "class_bias_cov": None if self.class_bias_cov is None else [[float(v) for v in row] for row in self.class_bias_cov],
                "precision": self.precision, "measured_precision": self.measured_precision, "pooling": self.pooling}

    @classmethod
    def from_header(cls, d: Mapping[str, Any], where: str = "results header") -> "QuantParams":
        try:
            schema = int(d.get("schema", 0))
            if schema not in READABLE_SCHEMAS:
                raise QuantificationError(f"{where}: quantification schema {d.get('schema')!r}, this wbc-edge reads {list(READABLE_SCHEMAS)}")
            params = cls(classes=[str(c) for c in d["classes"]], train_prior=np.asarray(d["train_prior"], np.float64),
                         confusion=np.asarray(d["confusion"], np.float64), mean_posteriors=np.asarray(d["mean_posteriors"], np.float64),
                         temperature=float(d.get("temperature", 1.0)),
                         head_temperatures={str(k): float(v) for k, v in (d.get("head_temperatures") or {}).items()},
                         class_bias=None if d.get("class_bias") is None else np.asarray(d["class_bias"], np.float64),
                         class_bias_cov=None if d.get("class_bias_cov") is None else np.asarray(d["class_bias_cov"], np.float64),
                         precision=str(d.get("precision", "fp32")), measured_precision=str(d.get("measured_precision", "fp32")),
                         pooling=member_pooling(d))
        except (KeyError, TypeError, ValueError) as e:
            raise QuantificationError(f"{where}: quantification parameters unreadable ({e})") from None
        params.check(where)
        return params

    def check(self, where: str) -> None:
        k = len(self.classes)
        for name, arr, shape in (("train_prior", self.train_prior, (k,)), ("confusion", self.confusion, (k, k)),
                                 ("mean_posteriors", self.mean_posteriors, (k, k))):
            if arr.shape != shape:
                raise QuantificationError(f"{where}: {name} has shape {arr.shape}, expected {shape} for {k} classes")
            if not np.all(np.isfinite(arr)) or np.any(arr < 0):
                raise QuantificationError(f"{where}: {name} holds negative or non-finite values")
        for name, arr, shape in (("class_bias", self.class_bias, (k,)), ("class_bias_cov", self.class_bias_cov, (k, k))):
            if arr is not None and (arr.shape != shape or not np.all(np.isfinite(arr))):
                raise QuantificationError(f"{where}: {name} must be {shape} finite numbers, got shape {arr.shape}")
        if self.train_prior.sum() <= 0:
            raise QuantificationError(f"{where}: train_prior sums to 0")
        self.train_prior = self.train_prior / self.train_prior.sum()
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise QuantificationError(f"{where}: temperature {self.temperature!r} must be a positive number")
        if self.pooling not in POOLINGS:
            raise QuantificationError(f"{where}: pooling '{self.pooling}' is not one of {list(POOLINGS)}")

    def calibrated_probs(self, head_probs: np.ndarray) -> np.ndarray:
        """Each cell's calibrated probability row from its (present) heads' softmax rows (n, H, K):
        pooled, then temperature-scaled. What a per-cell result line holds and the estimators read."""
        return apply_temperature(pool_heads(head_probs, self.pooling), self.temperature)


def params_from_member(member: Mapping[str, Any], precision: str, where: str = QUANT_MEMBER) -> QuantParams:
    """The parameters for `precision` from a parsed quantification.json (fp32's rates if it was not measured)."""
    schema = member.get("schema", 0)
    if schema not in READABLE_SCHEMAS:
        raise QuantificationError(f"{where}: schema {schema!r}, this wbc-edge reads {list(READABLE_SCHEMAS)}")
    by_precision = member.get("precisions") or {}
    measured = precision if precision in by_precision else "fp32"
    if measured not in by_precision:
        raise QuantificationError(f"{where}: no held-out rates for precision '{precision}' nor fp32")
    rates = by_precision[measured]
    temps = member.get("temperature") or {}
    return QuantParams.from_header({
        "schema": schema, "classes": member["classes"], "train_prior": member["train_prior"],
        "confusion": rates["confusion"], "mean_posteriors": rates["mean_posteriors"],
        "temperature": temps.get("combined", 1.0), "head_temperatures": temps.get("heads", {}),
        "class_bias": temps.get("class_bias"), "class_bias_cov": temps.get("class_bias_cov"),
        "precision": precision, "measured_precision": measured, "pooling": member_pooling(member)}, where)


def params_for_bundle(bundle: Any, precision: str) -> QuantParams | None:
    """The bundle's parameters for `precision`; None for a bundle exported before quantification.json."""
    if not bundle.has(QUANT_MEMBER):
        return None
    where = f"bundle {bundle.path}: {QUANT_MEMBER}"
    params = params_from_member(bundle.read_json(QUANT_MEMBER), precision, where)
    if list(params.classes) != list(bundle.spec.classes):  # refused at load, not mid-run
        raise QuantificationError(f"{where} lists classes {list(params.classes)}, spec.json {list(bundle.spec.classes)}; re-run wbc-export quantify")
    return params


def measure_quantification(head_probs_by_precision: Mapping[str, np.ndarray], labels: np.ndarray, classes: Sequence[str],
                           heads: Sequence[str], train_prior: Sequence[float], data: str = "",
                           pooling: str = DEFAULT_POOLING) -> dict[str, Any]:
    """quantification.json from every precision's head outputs (n, H, K) on labelled held-out cells:
    BCTS fitted on fp32's pooled rows, a temperature per head, ECE and NLL of the pooled rows before and
    after it (and of the graph's combined output, `*_graph`, for reference), and per precision the
    confusion counts and mean calibrated posteriors.

    ECE "after" is of the BCTS posteriors (what EM uses); "after_temperature" of the per-cell lines' probabilities."""
    if pooling not in POOLINGS:
        raise QuantificationError(f"pooling '{pooling}' is not one of {list(POOLINGS)}")
    labels = np.asarray(labels, dtype=np.int64)
    k = len(classes)
    head_fp32 = np.asarray(head_probs_by_precision["fp32"], np.float64)
    fp32 = pool_heads(head_fp32, pooling)
    t_combined, bias, bias_cov = fit_bias_corrected_temperature(fp32, labels)
    t_heads = {h: fit_temperature(head_fp32[:, i], labels) for i, h in enumerate(heads)}
    graph = pool_heads(head_fp32, "mean")  # the graph's own combined output, for reference
    bcts = apply_class_bias(apply_temperature(fp32, t_combined), bias)
    before, after = reliability(fp32, labels), reliability(bcts, labels)
    precisions = {}
    for precision, head_probs in head_probs_by_precision.items():
        pooled = pool_heads(head_probs, pooling)
        cal = apply_temperature(pooled, t_combined)
        confusion = np.zeros((k, k), np.int64)
        np.add.at(confusion, (labels, cal.argmax(axis=1)), 1)
        mean_post = np.zeros((k, k))
        for i in range(k):
            if (labels == i).any():
                mean_post[i] = cal[labels == i].mean(axis=0)
        precisions[precision] = {"n_cells": int(len(labels)), "confusion": confusion.tolist(), "mean_posteriors": mean_post.tolist(),
                                 "ece_graph": reliability(pool_heads(head_probs, "mean"), labels)["ece"],
                                 "ece_before": reliability(pooled, labels)["ece"],
                                 "ece_after": reliability(apply_class_bias(cal, bias), labels)["ece"],
                                 "ece_after_temperature": reliability(cal, labels)["ece"]}
    prior = np.asarray(train_prior, np.float64)
    return {"schema": QUANT_SCHEMA, "classes": list(classes), "heads": list(heads), "pooling": pooling,
            "train_prior": (prior / prior.sum()).tolist(),
            "temperature": {"combined": t_combined, "heads": t_heads, "class_bias": bias.tolist(), "class_bias_cov": bias_cov.tolist()},
            "fit": {"data": data, "n_cells": int(len(labels)), "class_counts": np.bincount(labels, minlength=k).tolist(),
                    "ece_graph": reliability(graph, labels)["ece"], "nll_graph": nll(graph, labels),
                    "ece_before": before["ece"], "ece_after": after["ece"],
                    "nll_before": nll(fp32, labels), "nll_after": nll(bcts, labels),
                    "reliability_before": before["bins"], "reliability_after": after["bins"]},
            "precisions": precisions}


# ---- estimators ------------------------------------------------------------------------------
def checked_probs(probs: Any, n_classes: int, where: str) -> np.ndarray:
    """(n, K) float64 rows on the simplex, or a QuantificationError naming the first bad cell."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise QuantificationError(f"{where}: probabilities have shape {p.shape}, expected (cells, {n_classes})")
    bad = ~np.all(np.isfinite(p), axis=1) | np.any(p < 0, axis=1)
    if bad.any():
        raise QuantificationError(f"{where}: cell {int(np.argmax(bad))} has NaN, infinite or negative probabilities; "
                                  "no share estimated")
    sums = p.sum(axis=1)
    if np.any(np.abs(sums - 1.0) > 1e-3):
        i = int(np.argmax(np.abs(sums - 1.0)))
        raise QuantificationError(f"{where}: cell {i}'s probabilities sum to {sums[i]:.4f}, not 1")
    return p / sums[:, None]


def simplex_lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin ||a x - b|| over x >= 0, sum x = 1 (nnls with a weighted sum row, then renormalised)."""
    from scipy.optimize import nnls

    k = a.shape[1]
    aug = np.vstack([a, np.full((1, k), _SUM_ROW_WEIGHT)])
    rhs = np.concatenate([b, [_SUM_ROW_WEIGHT]])
    x, _ = nnls(aug, rhs, maxiter=50 * k)
    s = x.sum()
    return x / s if s > 0 else np.full(k, 1.0 / k)


def em_prior_adaptation(probs: np.ndarray, train_prior: np.ndarray, tol: float = EM_TOL, max_iter: int = EM_MAX_ITER) -> np.ndarray:
    """Saerens et al. (2002) for one sample (n, K) or a batch of samples (B, n, K); returns the shares.

    Each step is the paper's E and M step; SQUAREM (Varadhan and Roland 2008) extrapolates over two
    steps, because plain EM crawls when a share tends to 0 (hundreds of steps for a basophil share).
    The fixed point is the same maximum-likelihood mix."""
    p = np.asarray(probs, np.float64)
    single = p.ndim == 2
    if single:
        p = p[None]
    prior = np.clip(np.asarray(train_prior, np.float64), _PROB_FLOOR, None)  # (K,) or one per sample (B, K)
    prior = np.broadcast_to(prior / prior.sum(axis=-1, keepdims=True), (p.shape[0], p.shape[2]))
    ratio = p / prior[:, None, :]

    def step(q: np.ndarray) -> np.ndarray:
        w = ratio * q[:, None, :]
        w /= np.clip(w.sum(axis=2, keepdims=True), _PROB_FLOOR, None)
        return w.mean(axis=1)

    q = prior.copy()
    for _ in range(max_iter):
        q1 = step(q)
        q2 = step(q1)
        r, v = q1 - q, q2 - 2 * q1 + q
        alpha = -np.sqrt((r * r).sum(1) / np.clip((v * v).sum(1), 1e-300, None))
        alpha = np.minimum(alpha, -1.0)[:, None]
        cand = q - 2 * alpha * r + alpha * alpha * v
        cand = np.where(np.any(cand < 0, axis=1, keepdims=True), q2, cand)  # extrapolated off the simplex: plain EM
        q_new = step(cand / cand.sum(axis=1, keepdims=True))
        done = np.max(np.abs(q_new - q)) < tol
        q = q_new
        if done:
            break
    return q[0] if single else q


def _point(method: str, probs: np.ndarray, rates: np.ndarray, mean_post: np.ndarray, prior: np.ndarray) -> np.ndarray:
    k = probs.shape[1]
    if method == "cc":
        return np.bincount(probs.argmax(axis=1), minlength=k) / len(probs)
    if method == "acc":
        return simplex_lstsq(rates.T, np.bincount(probs.argmax(axis=1), minlength=k) / len(probs))
    if method == "pacc":
        return simplex_lstsq(mean_post.T, probs.mean(axis=0))
    return em_prior_adaptation(probs, prior)  # prior: the effective (bias-corrected) training prior


@dataclass
class ShareEstimate:
    """One sample's differential: shares (0..1) per class with their 95% interval."""

    method: str
    classes: list[str]
    shares: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_cells: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "n_cells": self.n_cells, "notes": list(self.notes),
                "shares": {c: float(v) for c, v in zip(self.classes, self.shares)},
                "low": {c: float(v) for c, v in zip(self.classes, self.low)},
                "high": {c: float(v) for c, v in zip(self.classes, self.high)}}


def wilson_bounds(share: np.ndarray, n: int, z: float = Z_95) -> tuple[np.ndarray, np.ndarray]:
    p = np.clip(np.asarray(share, np.float64), 0.0, 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


BOOT_CHUNK_VALUES = 4_000_000  # float64 values per bootstrap chunk (32 MB)


def estimate_shares(probs: Any, params: QuantParams, method: str = DEFAULT_METHOD, n_boot: int = N_BOOT, seed: int = 0,
                    where: str = "sample") -> ShareEstimate:
    """The sample's class shares from its cells' calibrated probabilities (see the module docstring).

    Deterministic for a given seed: the live run and `wbc-run summarize` give the same numbers."""
    if method not in METHODS:
        raise QuantificationError(f"{where}: estimator '{method}' is not one of {list(METHODS)}")
    k = len(params.classes)
    p = checked_probs(probs, k, where)
    n = len(p)
    if n == 0:
        raise QuantificationError(f"{where}: no cells, no differential to estimate")
    rates, mean_post, prior = params.rates(), params.mean_posteriors, params.effective_prior()
    notes = []
    empty_rows = [params.classes[i] for i in range(k) if params.row_counts[i] == 0]
    if empty_rows and method in ("acc", "pacc"):
        notes.append(f"no held-out cells of {', '.join(empty_rows)}: their rates are unknown (uniform)")
    if params.measured_precision != params.precision and method != "cc":
        notes.append(f"classifier rates measured for {params.measured_precision}, run on {params.precision}")
    shares = _point(method, p, rates, mean_post, prior)
    if n_boot <= 0:  # the point estimate only (the live status line); the Wilson interval alone
        w_low, w_high = wilson_bounds(shares, n)
        return ShareEstimate(method=method, classes=list(params.classes), shares=shares, low=np.minimum(w_low, shares),
                             high=np.maximum(w_high, shares), n_cells=n, notes=notes + ["no bootstrap: Wilson interval only"])
    rng = np.random.default_rng(seed)
    if method == "em":
        # the calibration's own error: the class bias redrawn from its Laplace approximation, per replicate
        priors = np.broadcast_to(prior, (n_boot, k))
        if params.class_bias_cov is not None:
            biases = rng.multivariate_normal(params.bias(), params.class_bias_cov, size=n_boot, method="eigh")
            priors = params.train_prior * np.exp(-biases)
        priors = priors / priors.sum(axis=1, keepdims=True)
        # replicates in chunks of at most ~BOOT_CHUNK_VALUES resampled probabilities: memory stays
        # bounded on a long run (100k cells x 200 replicates would be GBs at once)
        chunk = max(1, BOOT_CHUNK_VALUES // (n * k))
        boot = np.concatenate([em_prior_adaptation(p[rng.integers(0, n, size=(min(chunk, n_boot - b0), n))], priors[b0:b0 + chunk])
                               for b0 in range(0, n_boot, chunk)])
    else:
        boot = np.empty((n_boot, k))
        counts = params.confusion
        soft_counts = mean_post * params.row_counts[:, None]
        for b in range(n_boot):
            sample = p[rng.integers(0, n, size=n)]
            if method == "cc":
                boot[b] = _point("cc", sample, rates, mean_post, prior)
                continue
            # the classifier's rates redrawn from their posterior given the held-out counts
            r = rng.gamma((counts if method == "acc" else soft_counts) + 0.5)
            r /= r.sum(axis=1, keepdims=True)
            boot[b] = _point(method, sample, r, r, prior)
    low, high = np.quantile(boot, [0.025, 0.975], axis=0)
    w_low, w_high = wilson_bounds(shares, n)
    low, high = np.minimum(low, w_low), np.maximum(high, w_high)
    return ShareEstimate(method=method, classes=list(params.classes), shares=shares, low=np.minimum(low, shares),
                         high=np.maximum(high, shares), n_cells=n, notes=notes)


__all__ = ["DEFAULT_METHOD", "DEFAULT_POOLING", "POOLINGS", "member_pooling", "pool_heads", "params_for_bundle", "METHODS", "QUANT_MEMBER", "QUANT_SCHEMA", "QuantParams", "QuantificationError", "ShareEstimate",
           "apply_class_bias", "apply_temperature", "checked_probs", "fit_bias_corrected_temperature", "em_prior_adaptation", "estimate_shares", "fit_temperature",
           "measure_quantification", "params_from_member", "reliability", "simplex_lstsq"]
