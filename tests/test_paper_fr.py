"""The paper's synthetic Factorize-Recover experiment through CompressedNMF's defaults.

Sharan, Tai, Bailis, Valiant (ICML 2019), PAPERS.md §1: n = m = 2000, r = 10, each column of W
5 % nonzero with |N(0, 1)| values, H = |N(0, 1)| with unit-norm rows, Gaussian noise with
‖E‖ = 0.1 ‖W H‖ (so M has negative entries), expander sketch with s = 5 ones per column,
d = 400 (5x compression). Fitted as ``CompressedNMF(n_components=10, sketch_dim=400).fit(M.T)``
(scikit-learn orientation: samples x features) with default settings, i.e. the library's
pipeline: one-pass sketch + hold-out sketch, NMF of the sketch, recover="auto".

Targets (issue 4): mean |corr| of matched W and of H >= 0.99, and ``‖M − Ŵ Ĥ‖/‖M‖`` within
1.15x of the uncompressed scikit-learn NMF of max(M, 0) (error measured against M). The recovery
must be the sparse one (no fallback to the exact data pass) with a clean certificate.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

from cfact_dask.datasets import planted_nmf
from cfact_dask.estimators._nmf import CompressedNMF
from cfact_dask.metrics import match_factors

N = M_SAMPLES = 2000
RANK, D = 10, 400
RATIO = 1.15


def _uncompressed_error(M: np.ndarray, max_iter: int) -> float:
    from sklearn.decomposition import NMF

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's ConvergenceWarning at max_iter
        model = NMF(RANK, init="nndsvda", max_iter=max_iter, random_state=0)
        Ws = model.fit_transform(np.maximum(M, 0))
    return float(np.linalg.norm(M - Ws @ model.components_) / np.linalg.norm(M))


def _experiment(seed: int, sklearn_max_iter: int) -> dict:
    M, W, H = planted_nmf(N, M_SAMPLES, RANK, density=0.05, noise=0.1, random_state=seed)
    assert (M < 0).any()  # the noise makes M (and the sketch) signed, as in the paper
    t0 = time.perf_counter()
    # any CfactWarning (RecoveryWarning, ConvergenceWarning) is an error (pyproject filter)
    est = CompressedNMF(n_components=RANK, sketch_dim=D, random_state=seed).fit(M.T)
    seconds = time.perf_counter() - t0
    W_hat = est.components_.T  # features x r
    H_hat = np.asarray(est.result_.H)  # r x samples, taken as is from the compressed NMF
    match = match_factors(W, W_hat, H, H_hat)
    err = float(np.linalg.norm(M - W_hat @ H_hat) / np.linalg.norm(M))
    ref = _uncompressed_error(M, sklearn_max_iter)
    return dict(
        est=est, match=match, err=err, ref=ref, seconds=seconds, cert=est.recovery_.certificate
    )


def _check(out: dict) -> None:
    est, cert, match = out["est"], out["cert"], out["match"]
    figures = (
        f"error {out['err']:.4f} vs uncompressed {out['ref']:.4f} "
        f"(ratio {out['err'] / out['ref']:.3f}); held-out estimate {cert.holdout_error:.4f}, "
        f"baseline {cert.holdout_baseline:.4f}; corr W {match.mean_corr_W:.4f}, "
        f"H {match.mean_corr_H:.4f}; fit {out['seconds']:.1f} s"
    )
    # the sparse recovery itself, with a clean certificate (no fallback to lstsq-data)
    assert est.recovery_.method == "nnlasso", figures
    assert cert.ok and not cert.messages, (cert.messages, figures)
    assert est.report_["sketch"]["compression"] == pytest.approx(5.0)
    assert match.mean_corr_W >= 0.99, figures
    assert match.mean_corr_H >= 0.99, figures
    assert out["err"] <= RATIO * out["ref"], figures
    # the certificate's estimate tracks the true error: with 32 Gaussian hold-out rows
    # (est / true)² ~ χ²₃₂ / 32, so est / true has a spread of ~12 % and its 0.1 % / 99.9 %
    # quantiles are 0.67 / 1.40 (measured on seeds 0-4: -17 % to +3 %)
    assert cert.holdout_error == pytest.approx(out["err"], rel=0.35), figures
    assert cert.holdout_baseline <= cert.holdout_error


@pytest.mark.parametrize("seed", [0, 1])
def test_paper_experiment(seed):
    # sklearn at 100 iterations is within 0.05 % of its converged error on this problem (and
    # above it, so the bound is not tightened); the slow test uses sklearn's defaults
    _check(_experiment(seed, sklearn_max_iter=100))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_paper_experiment_five_seeds(seed):
    _check(_experiment(seed, sklearn_max_iter=200))
