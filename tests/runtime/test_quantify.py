"""The differential estimators: against quapy (an independent implementation) on the same inputs,
recovery of a known mix from posteriors that are exact by construction, and the edge cases."""
import numpy as np
import pytest

from wbc_edge.runtime.quantify import (
    QuantificationError,
    QuantParams,
    apply_temperature,
    em_prior_adaptation,
    estimate_shares,
    fit_temperature,
    measure_quantification,
    params_from_member,
    pool_heads,
    reliability,
    simplex_lstsq,
)

CLASSES = ["neutrophil", "lymphocyte", "eosinophil", "monocyte", "basophil"]
K = len(CLASSES)
MEANS = np.array([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0], [1.2, 1.2, 0], [0, 1.2, 1.2]])  # monocyte/basophil overlap others


def exact_posteriors(labels, rng, prior, sigma=0.8):
    """Draw features x ~ N(mean_y, sigma^2 I); return the exact Bayes posterior under `prior`: calibrated by construction."""
    x = MEANS[labels] + rng.normal(0, sigma, (len(labels), MEANS.shape[1]))
    logp = -((x[:, None, :] - MEANS[None]) ** 2).sum(-1) / (2 * sigma**2) + np.log(prior)[None]
    logp -= logp.max(1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(1, keepdims=True)


def params_from_heldout(rng, n=2000, prior=None):
    prior = np.full(K, 1 / K) if prior is None else prior
    labels = rng.choice(K, size=n, p=prior)
    probs = exact_posteriors(labels, rng, prior)
    member = measure_quantification({"fp32": probs[:, None, :]}, labels, CLASSES, ["combined"], prior)
    return params_from_member(member, "fp32"), member


def sample(rng, mix, n, train_prior):
    labels = rng.choice(K, size=n, p=mix)
    return exact_posteriors(labels, rng, train_prior), labels


def test_em_matches_quapy_emq():
    quapy = pytest.importorskip("quapy")
    from quapy.method.aggregative import EMQ

    rng = np.random.default_rng(1)
    prior = np.full(K, 1 / K)
    probs, _ = sample(rng, [0.6, 0.3, 0.05, 0.04, 0.01], 400, prior)
    ours = em_prior_adaptation(probs, prior, tol=1e-9)
    theirs, _ = EMQ.EM(prior, probs, epsilon=1e-9)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert quapy is not None


@pytest.mark.parametrize("kind", ["acc", "pacc"])
def test_adjusted_counts_match_quapy_solver(kind):
    pytest.importorskip("quapy")
    from quapy.method.aggregative import ACC

    rng = np.random.default_rng(2)
    params, _ = params_from_heldout(rng)
    probs, _ = sample(rng, [0.55, 0.3, 0.1, 0.04, 0.01], 400, params.train_prior)
    if kind == "acc":
        m, q = params.rates(), np.bincount(probs.argmax(1), minlength=K) / len(probs)
    else:
        m, q = params.mean_posteriors, probs.mean(0)
    theirs = ACC.solve_adjustment(m.T, q, method="inversion", solver="minimize")
    ours = simplex_lstsq(m.T, q)
    np.testing.assert_allclose(ours, theirs, atol=2e-3)
    np.testing.assert_allclose(estimate_shares(probs, params, kind, n_boot=10).shares, ours)


def test_every_estimator_recovers_a_known_mix_where_argmax_does_not():
    rng = np.random.default_rng(3)
    params, _ = params_from_heldout(rng, n=20000)  # rates known well: what is left is the estimator's own bias
    mix = np.array([0.62, 0.28, 0.06, 0.03, 0.01])
    probs, _ = sample(rng, mix, 20000, params.train_prior)
    cc = estimate_shares(probs, params, "cc", n_boot=20).shares
    assert np.abs(cc - mix).max() > 0.05  # balanced training: argmax moves neutrophils onto the rare classes
    for method in ("em", "acc", "pacc"):
        est = estimate_shares(probs, params, method, n_boot=10)
        assert np.abs(est.shares - mix).max() < 0.015, (method, est.shares)
        assert np.all(est.low <= est.shares) and np.all(est.shares <= est.high)  # coverage: benchmarks/count.py


def test_absent_class_estimated_near_zero_with_interval_from_zero():
    rng = np.random.default_rng(4)
    params, _ = params_from_heldout(rng, n=20000)
    mix = np.array([0.7, 0.25, 0.05, 0.0, 0.0])
    probs, _ = sample(rng, mix, 3000, params.train_prior)
    for method in ("em", "acc", "pacc"):
        est = estimate_shares(probs, params, method, n_boot=50)
        assert est.shares[3] < 0.015 and est.shares[4] < 0.015, (method, est.shares)
        assert est.low[3] < 1e-9 and est.low[4] < 1e-9
        assert est.shares.sum() == pytest.approx(1.0)


def test_one_cell_sample_gives_a_valid_mix_with_a_wide_interval():
    rng = np.random.default_rng(5)
    params, _ = params_from_heldout(rng)
    probs, _ = sample(rng, [1, 0, 0, 0, 0], 1, params.train_prior)
    for method in ("em", "acc", "pacc", "cc"):
        est = estimate_shares(probs, params, method, n_boot=20)
        assert est.n_cells == 1 and est.shares.sum() == pytest.approx(1.0) and np.all(est.shares >= 0)
        assert np.all(est.high - est.low > 0.5)  # one cell says little about any class's share


def test_singular_confusion_still_gives_a_mix_on_the_simplex():
    # classes 3 and 4 are indistinguishable: identical rows, the matrix has rank K-1
    confusion = np.diag([100.0, 100, 100, 0, 0])
    confusion[3, 3] = confusion[3, 4] = confusion[4, 3] = confusion[4, 4] = 50
    params = QuantParams(CLASSES, np.full(K, 0.2), confusion, confusion / confusion.sum(1, keepdims=True))
    assert np.linalg.matrix_rank(params.mean_posteriors) == K - 1
    probs = np.eye(K)[[0] * 50 + [1] * 30 + [3] * 10 + [4] * 10]
    for method in ("acc", "pacc"):
        est = estimate_shares(probs, params, method, n_boot=30)
        assert np.all(np.isfinite(est.shares)) and np.all(est.shares >= 0) and est.shares.sum() == pytest.approx(1.0)
        assert est.shares[3] + est.shares[4] == pytest.approx(0.2, abs=0.02)  # the joint share is identifiable


@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.1])
def test_bad_probabilities_raise_naming_the_run_and_cell(bad):
    params = QuantParams(CLASSES, np.full(K, 0.2), np.eye(K) * 10, np.eye(K))
    probs = np.full((5, K), 0.2)
    probs[3, 1] = bad
    with pytest.raises(QuantificationError, match=r"run results\.jsonl: cell 3 .*no share estimated"):
        estimate_shares(probs, params, "em", where="run results.jsonl")


def test_empty_sample_and_unknown_method_raise():
    params = QuantParams(CLASSES, np.full(K, 0.2), np.eye(K) * 10, np.eye(K))
    with pytest.raises(QuantificationError, match="no cells"):
        estimate_shares(np.zeros((0, K)), params)
    with pytest.raises(QuantificationError, match="estimator 'median'"):
        estimate_shares(np.full((2, K), 0.2), params, "median")


def test_temperature_is_softmax_of_scaled_logits_and_fit_recovers_it():
    rng = np.random.default_rng(6)
    logits = rng.normal(0, 3, (4000, K))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    scaled = np.exp(logits / 2.5) / np.exp(logits / 2.5).sum(1, keepdims=True)
    np.testing.assert_allclose(apply_temperature(p, 2.5), scaled, atol=1e-12)
    # labels drawn from softmax(logits / 2.5): the overconfident p is fixed by T = 2.5
    labels = np.array([rng.choice(K, p=row) for row in scaled])
    t = fit_temperature(p, labels)
    assert t == pytest.approx(2.5, rel=0.1)
    assert reliability(apply_temperature(p, t), labels)["ece"] < reliability(p, labels)["ece"]


def test_the_same_inputs_give_the_same_interval():
    rng = np.random.default_rng(7)
    params, _ = params_from_heldout(rng)
    probs, _ = sample(rng, [0.6, 0.3, 0.05, 0.04, 0.01], 200, params.train_prior)
    a = estimate_shares(probs, params, "acc", n_boot=40)
    b = estimate_shares(probs.tolist(), QuantParams.from_header(params.to_header()), "acc", n_boot=40)
    np.testing.assert_array_equal(a.low, b.low)
    np.testing.assert_array_equal(a.high, b.high)


def test_bias_corrected_temperature_recovers_t_and_bias_and_em_folds_the_bias_into_the_prior():
    from wbc_edge.runtime.quantify import apply_class_bias, fit_bias_corrected_temperature

    rng = np.random.default_rng(8)
    logits = rng.normal(0, 3, (6000, K))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    bias = np.array([0.0, -0.5, 0.3, -1.0, 0.8])
    truth = apply_class_bias(apply_temperature(p, 2.0), bias)
    labels = (truth.cumsum(1) > rng.random((len(p), 1))).argmax(1)  # labels drawn from softmax(z / 2 + b)
    t, b, cov = fit_bias_corrected_temperature(p, labels)
    assert t == pytest.approx(2.0, rel=0.1)
    np.testing.assert_allclose(b, bias, atol=4 * np.sqrt(np.diag(cov)).max())
    assert cov[0, 0] == 0 and np.all(np.diag(cov)[1:] > 0)
    # EM on the temperature-scaled probabilities at the effective prior == EM on the BCTS posteriors
    params = QuantParams(CLASSES, np.full(K, 0.2), np.eye(K) * 10, np.eye(K), temperature=t, class_bias=b)
    cal = apply_temperature(p[:500], t)
    np.testing.assert_allclose(em_prior_adaptation(cal, params.effective_prior(), tol=1e-10),
                               em_prior_adaptation(apply_class_bias(cal, b), params.train_prior, tol=1e-10), atol=1e-6)


def test_log_mean_pooling_is_the_softmax_of_the_heads_mean_logits_and_mean_pooling_their_average():
    rng = np.random.default_rng(9)
    logits = rng.normal(0, 3, (50, 4, K))  # four heads
    heads = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    z = logits.mean(axis=1)
    np.testing.assert_allclose(pool_heads(heads, "log-mean"), np.exp(z) / np.exp(z).sum(-1, keepdims=True), atol=1e-12)
    np.testing.assert_allclose(pool_heads(heads, "mean"), heads.mean(axis=1), atol=1e-12)
    np.testing.assert_allclose(pool_heads(heads[:, :1], "log-mean"), heads[:, 0], atol=1e-12)  # one head: itself
    with pytest.raises(QuantificationError, match="pooling 'median'"):
        pool_heads(heads, "median")
    with pytest.raises(QuantificationError, match="cells, heads, classes"):
        pool_heads(heads[:, 0], "mean")


def test_measure_quantification_fits_the_pooled_rows_and_records_the_pooling():
    rng = np.random.default_rng(10)
    labels = rng.choice(K, size=3000)
    logits = rng.normal(0, 1, (3000, 3, K))
    logits[np.arange(3000), :, labels] += 2.0  # every head leans to the truth
    heads = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    member = measure_quantification({"fp32": heads}, labels, CLASSES, ["a", "b", "c"], np.full(K, 0.2), pooling="log-mean")
    params = params_from_member(member, "fp32")
    assert member["pooling"] == params.pooling == "log-mean"
    cal = params.calibrated_probs(heads)
    np.testing.assert_allclose(cal, apply_temperature(pool_heads(heads, "log-mean"), member["temperature"]["combined"]))
    confusion = np.zeros((K, K), int)
    np.add.at(confusion, (labels, cal.argmax(1)), 1)
    assert confusion.tolist() == member["precisions"]["fp32"]["confusion"]
    legacy = {**member, "schema": 1}  # a bundle quantified before pooling was recorded: fitted on the graph's mean
    del legacy["pooling"]
    assert params_from_member(legacy, "fp32").pooling == "mean"
    assert params_from_member({**legacy, "pooling": "log-mean"}, "fp32").pooling == "mean"  # schema 1 has no pooling
    with pytest.raises(QuantificationError, match="schema 3"):
        params_from_member({**member, "schema": 3}, "fp32")
    # what BCTS minimises on these rows cannot get worse: the NLL after is at most the NLL before
    assert member["fit"]["nll_after"] <= member["fit"]["nll_before"] + 1e-9
