"""The recovery certificate's acceptance rule (issue 18): relative to the baseline, not absolute.

The former rule accepted ``holdout_error <= 1.5 x holdout_baseline + 0.05``: at 1 % noise the
baseline is ~0.01, so a sparse recovery three to four times worse than the exact pass
(``lstsq-data``) passed and ``recover: auto`` kept it (the speed-up map's 3000 x 1000, 2 %
dense, 1 % noise cell: error ratio 4.18 against scikit-learn). The rule now is
``holdout_error <= holdout_limit(baseline, d_h)`` = 1.185 x the baseline for 32 hold-out rows
(measurements: benchmarks/results/certificate_rule.md).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import cfact_dask as cf
from cfact_dask.datasets import planted_nmf
from cfact_dask.errors import RecoveryWarning
from cfact_dask.recovery import holdout_error, holdout_limit
from cfact_dask.recovery.certificate import HOLDOUT_RATIO, HOLDOUT_SLACK

N, M, R = 2000, 400, 5
D = N // 10  # 10x compression, as in the speed-up map


def _errors(X, res):
    """True relative errors of the sparse recovery and of lstsq-data with the same H."""
    H = np.asarray(res.H)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecoveryWarning)
        ls = cf.recover(res.factors, res.sketch.operator, "lstsq-data", data=X)
    nx = np.linalg.norm(X)
    sparse = float(np.linalg.norm(X - np.asarray(res.W) @ H) / nx)
    exact = float(np.linalg.norm(X - np.asarray(ls.W) @ H) / nx)
    return sparse, exact


def _run(X, recover):
    return cf.factorize_recover(X, R, sketch=dict(n_components=D), recover=recover,
                                progress=False)


def test_holdout_limit_is_relative_and_tightens_with_more_rows():
    se32 = math.sqrt(2 / 32) * (HOLDOUT_RATIO**2 - 1) / (2 * HOLDOUT_RATIO)
    assert holdout_limit(0.1, 32) == pytest.approx(0.1 * (HOLDOUT_RATIO + HOLDOUT_SLACK * se32))
    assert holdout_limit(0.1, 32) == pytest.approx(0.1185, abs=5e-4)
    # relative: the same factor at any noise level (the former absolute 0.05 was 5x the
    # baseline itself at 1 % noise)
    assert holdout_limit(0.01, 32) == pytest.approx(holdout_limit(0.1, 32) / 10)
    # more hold-out rows, a smaller standard error, a tighter limit; never below the ratio
    assert 0.1 * HOLDOUT_RATIO < holdout_limit(0.1, 128) < holdout_limit(0.1, 32) \
        < holdout_limit(0.1, 8)
    # an exactly fitted baseline (0) is float rounding: a tiny error is still accepted
    assert holdout_limit(0.0, 32) == pytest.approx(1e-6)


def test_low_noise_sparse_recovery_is_rejected_and_auto_falls_back(caplog):
    X, _, _ = planted_nmf(N, M, R, density=0.02, noise=0.01, random_state=0)
    with pytest.warns(RecoveryWarning, match="looks unreliable") as rec_w:
        res = _run(X, "nnlasso")
    c = res.recovery.certificate
    sparse, exact = _errors(X, res)
    # the case is really poor: several times the exact pass's error with the same H ...
    assert sparse > 2 * exact, (sparse, exact)
    # ... the held-out ratio sees it (within its spread) ...
    assert c.holdout_error / c.holdout_baseline == pytest.approx(sparse / exact, rel=0.3)
    # ... the former absolute slack accepted it, the relative rule does not
    assert c.holdout_error <= 1.5 * c.holdout_baseline + 0.05
    assert not c.ok and c.holdout_limit == pytest.approx(holdout_limit(c.holdout_baseline, 32))
    assert c.holdout_error > c.holdout_limit
    # the message's figures are the rule's
    msg = str(rec_w[0].message)
    for fig in (c.holdout_error, c.holdout_baseline, c.holdout_limit):
        assert f"{fig:.3f}" in msg, msg
    assert f"{HOLDOUT_RATIO:g} x {c.holdout_baseline:.3f}" in msg and "32-row" in msg
    assert "recover='lstsq-data'" in msg
    # a sparse recovery's report puts its estimate beside the best reachable with its H
    from cfact_dask.cli.pipeline import _fmt_report

    assert (f"estimated relative error {c.holdout_error:.4f} (best reachable with this H: "
            f"{c.holdout_baseline:.4f})") in _fmt_report(res.report)
    # recover: auto falls back to the exact pass and reaches the exact error (refine: 0) ...
    with warnings.catch_warnings(), caplog.at_level("DEBUG", "cfact_dask.recovery.lasso"):
        warnings.simplefilter("ignore", RecoveryWarning)
        auto = _run(X, {"method": "auto", "refine": 0})
        refined = _run(X, "auto")
    # auto knows the exact pass follows: the debiased first solve was already hopeless (over
    # 2x the limit), so no λ of the path was solved (nnlasso by name walked it, above)
    said = caplog.text
    assert "first solve -> held-out error" in said and "lambda x" not in said
    assert len(res.recovery.params["lam_path"]) >= 1
    assert auto.recovery.method == "lstsq-data"
    assert auto.recovery.certificate.exact_error == pytest.approx(exact, rel=1e-6)
    assert auto.report["recover"]["method"] == "lstsq-data"
    assert auto.report["recover"]["refined"] is None and auto.H is auto.factors.H
    # ... and below it by default, refitting H and W against the data (the result's H is the
    # refitted one, and the error reported is the pair's, exactly)
    rep = refined.report["recover"]["refined"]
    assert refined.recovery.method == "lstsq-data" and 1 <= rep["rounds"] <= 2
    assert rep["errors"][0] == pytest.approx(exact, rel=1e-6)
    got = float(np.linalg.norm(X - np.asarray(refined.W) @ refined.H) / np.linalg.norm(X))
    assert got == pytest.approx(refined.recovery.certificate.exact_error, rel=1e-6)
    assert got == pytest.approx(rep["errors"][-1], rel=1e-6) and got < exact


def test_refined_h_is_stored_with_w_and_read_back_on_resume(tmp_path):
    """The H refitted with W (recover: auto's fallback, refine) is the run's H everywhere: the
    result, the recovered group (labelled), the reconstruction and a resumed run."""
    import xarray as xr
    import zarr

    X, _, _ = planted_nmf(N, M, R, density=0.02, noise=0.01, random_state=0)
    store = str(tmp_path / "data.zarr")
    z = zarr.create_array(store, shape=X.shape, chunks=(N, 100), dtype=X.dtype)
    z[...] = X  # chunked along the samples only: one read per refinement round
    out = str(tmp_path / "run.zarr")
    kw = dict(sketch=dict(n_components=D), recover="auto", out=out, reconstruct=True,
              progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecoveryWarning)
        res = cf.factorize_recover(store, R, **kw)
    rep = res.report["recover"]["refined"]
    assert res.recovery.method == "lstsq-data" and rep["rounds"] >= 1
    assert rep["passes"] == 1 and rep["in_memory"]  # 6.4 MB: read once, refined in memory
    assert not np.array_equal(res.H, np.asarray(res.factors.H))
    # shown where people look: the recovery's summary and the CLI's report
    from cfact_dask.cli.pipeline import _fmt_report

    assert "H and W refitted against the data" in repr(res.recovery)
    text = _fmt_report(res.report)
    assert f"round(s) in memory: relative error {rep['errors'][0]:.4f}" in text
    # the exact error is the best reachable with the refitted H: its held-out estimate (a
    # ~25 % spread at 32 rows) is not printed beside it as if it were another figure
    cert = res.recovery.certificate
    assert f"relative error (exact) {cert.exact_error:.4f}" in text
    assert "best reachable" not in text and "best reachable" not in repr(res.recovery)
    ds = xr.open_zarr(out, group="recovered", consolidated=False)
    np.testing.assert_array_equal(ds["H"].values, res.H)
    assert ds["H"].dims[0] == "component" and ds["W"].dims[1] == "component"
    err = float(np.linalg.norm(X - np.asarray(res.W) @ res.H) / np.linalg.norm(X))
    assert err == pytest.approx(rep["errors"][-1], rel=1e-6)
    assert res.reconstruction.relative_error == pytest.approx(err, rel=1e-5)
    again = cf.factorize_recover(store, R, resume=True, **kw)
    np.testing.assert_array_equal(again.H, res.H)
    np.testing.assert_array_equal(np.asarray(again.W), np.asarray(res.W))
    assert again.recovery.params["refined"]["errors"] == rep["errors"]
    # the CLI: cfact recover --refine stores the pair; cfact reconstruct uses the stored H
    import json

    from click.testing import CliRunner

    from cfact_dask.cli import cli

    r = CliRunner().invoke(cli, ["recover", out, "--method", "lstsq-data", "--data", store,
                                 "--refine", "3", "--overwrite", "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)["refined"]
    assert got["rounds"] >= 1 and got["errors"][-1] <= rep["errors"][-1] * (1 + 1e-9)
    r = CliRunner().invoke(cli, ["reconstruct", out, "--like", store, "--overwrite", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["relative_error"] == pytest.approx(got["errors"][-1], rel=1e-5)
    r = CliRunner().invoke(cli, ["recover", out, "--method", "nnlasso", "--refine", "1",
                                 "--overwrite"])
    assert r.exit_code != 0 and "--refine applies to --method lstsq-data" in r.output
    assert "Traceback" not in r.output


def test_ten_percent_noise_sparse_recovery_is_accepted():
    X, _, _ = planted_nmf(N, M, R, density=0.02, noise=0.1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecoveryWarning)  # no warning at all
        res = _run(X, "auto")
    c = res.recovery.certificate
    assert res.recovery.method == "nnlasso" and c.ok and not c.messages
    assert c.holdout_error <= c.holdout_limit
    sparse, exact = _errors(X, res)
    # the accepted recovery is within the 1.15x of the reachable error
    assert sparse <= 1.15 * exact, (sparse, exact)


@pytest.mark.parametrize("seed", range(5))
def test_estimate_and_baseline_share_the_projection(seed):
    """Why the ratio is steady: ‖Q(M − ŴH)‖² = ‖Q M (I − H⁺H)‖² + ‖Q (M H⁺ − Ŵ) H‖² exactly
    (the two residuals lie in orthogonal row spaces), so only the second term (a projection of
    a rank-r matrix) moves est / base, and est >= base always."""
    rng = np.random.default_rng(seed)
    n, m, r = 300, 80, 4
    Mx = rng.random((n, r)) @ rng.random((r, m)) + 0.05 * rng.standard_normal((n, m))
    H = rng.random((r, m))
    W = rng.random((n, r))
    Q = cf.make_operator("gaussian", 32, n, seed=seed)
    Qd = Q.to_dense()
    QM = Qd @ Mx
    est, base = holdout_error(W, H, QM, Q)
    excess = np.linalg.norm(Qd @ (Mx @ np.linalg.pinv(H) - W) @ H) / np.linalg.norm(QM)
    assert est**2 == pytest.approx(base**2 + excess**2, rel=1e-10)
    assert base <= est
