"""The probe's Newton logistic regression reaches sklearn's optimum (class-balanced, C=1, standardised features)."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from saelens_amort.metrics.logistic import fit_probe


def sparse_task(seed, n=4000, k=5, positive=0.15):
    """Codes-like features: mostly zero, non-negative, a few informative, one constant column when k > 2."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < positive
    X = np.abs(rng.normal(1.0, 0.5, (n, k))) * (rng.random((n, k)) < 0.2 + 0.3 * y[:, None] * (np.arange(k) < 2))
    X[:, -1 if k < 3 else 1] *= 30.0  # scales differ: standardisation matters
    if k > 2:
        X[:, -1] = 0.0
    return X, y


@pytest.mark.parametrize("seed,k", [(0, 1), (1, 2), (2, 5), (3, 5)])
def test_newton_fit_equals_sklearn(seed, k):
    X, y = sparse_task(seed, k=k)
    ref = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", C=1.0, tol=1e-12,
                                                             max_iter=100_000)).fit(X, y)
    ours = fit_probe(X, y)
    lr = ref[-1]
    np.testing.assert_allclose(ours.w, lr.coef_[0], rtol=1e-5, atol=1e-7)
    assert ours.b == pytest.approx(lr.intercept_[0], rel=1e-5, abs=1e-7)
    X_test, _ = sparse_task(seed + 100, k=k)
    np.testing.assert_allclose(ours.decision(X_test), ref.decision_function(X_test), rtol=1e-5, atol=1e-6)
    assert (ours.predict(X_test) == ref.predict(X_test)).mean() > 0.999


def test_balancing_and_penalty_matter():
    """The same data fitted without class weights or with a 100× stronger penalty gives coefficients far outside the
    tolerance above, so the equality pins both."""
    X, y = sparse_task(7, k=2)
    ours = fit_probe(X, y).w
    plain = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, tol=1e-12, max_iter=100_000)).fit(X, y)[-1]
    strong = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", C=0.01, tol=1e-12,
                                                                max_iter=100_000)).fit(X, y)[-1]
    assert np.abs(ours - plain.coef_[0]).max() > 1e-2
    assert np.abs(ours - strong.coef_[0]).max() > 1e-3
