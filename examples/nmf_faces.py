# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Compressed NMF of faces: Factorize-Recover on a pixel × image matrix
#
# The data are the 200 grey-level face images (25 × 25 pixels) of *Labeled Faces in the Wild*
# that scikit-image ships inside its wheel (`skimage.data.lfw_subset()`; nothing is downloaded).
# Stacked as a **pixel × image** matrix `M` (625 × 200), the pixels are the features: an
# expander sketch `M̃ = P M` replaces them by `d` measurements (sums of a few pixels each), NMF
# runs on the small `d × 200` sketch (`W̃ = P W`, `H`), and the 625-pixel parts `W` are recovered
# afterwards (Sharan, Tai, Bailis, Valiant, *Compressed factorization*, ICML 2019,
# arXiv:1706.08146).
#
# Two recoveries are compared:
#
# * `nnlasso`, sparse recovery from `W̃` alone (no second look at the data). It is exact when the
#   parts are sparse in the pixel basis. NMF parts of faces are only loosely localised, so the
#   recovery **certificate** flags the result as unreliable (a `RecoveryWarning` with the
#   figures), which is the engine doing its job rather than returning confident garbage;
# * `lstsq-data`, the fix the certificate names: one more pass over the data solves for `W`
#   given the compressed factorization's `H`.
#
# The reference is NMF of the uncompressed matrix. Reported: the relative error
# `‖M − W H‖_F / ‖M‖_F` of each, their ratio, and the mean |correlation| of the parts after
# Hungarian matching (`cf.match_factors`). NMF is not unique, so the correlation with another
# NMF's parts is a similarity, not an accuracy.
#
# Environment: `CFACT_EXAMPLES_OUT` (folder for the PNGs; a temp dir by default),
# `CFACT_EXAMPLES_SMALL=1` (fewer iterations and one compression level, for CI).

# %%
from __future__ import annotations

import json
import os
import tempfile
import time
import warnings

import numpy as np
from skimage.data import lfw_subset

import cfact_dask as cf
from cfact_dask.errors import ConvergenceWarning, RecoveryWarning

OUT = os.environ.get("CFACT_EXAMPLES_OUT") or tempfile.mkdtemp(prefix="cfact-faces-")
os.makedirs(OUT, exist_ok=True)
SMALL = os.environ.get("CFACT_EXAMPLES_SMALL", "") not in ("", "0")
RANK = 10
D = 300  # sketch rows for the main run: 625 / 300 ≈ 2.1× compression of the pixel axis
SWEEP = (300,) if SMALL else (150, 200, 300, 400)
NMF_OPTS = dict(max_iter=200 if SMALL else 500, tol=1e-5 if SMALL else 1e-6, random_state=0)

faces = lfw_subset()  # (200, 25, 25), values in [0, 1]
image_shape = faces.shape[1:]
M = faces.reshape(len(faces), -1).T.astype(np.float64)  # pixels × images
n, m = M.shape
print(f"lfw_subset: {m} images of {image_shape[0]}×{image_shape[1]} pixels -> M is {n} × {m}")

# %% [markdown]
# ## Uncompressed NMF (the reference)

# %%
t0 = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed iteration budget is fine here
    raw = cf.nmf(M, RANK, **NMF_OPTS)
W_raw, H_raw = np.asarray(raw.W), np.asarray(raw.H)
err_raw = cf.relative_error(M, W_raw, H_raw)
print(f"uncompressed NMF: rank {RANK}, {raw.n_iter_} iterations, relative error {err_raw:.4f} "
      f"({time.perf_counter() - t0:.1f}s)")

# %% [markdown]
# ## Sketch, factorize the sketch, recover
# The expander operator has 5 ones per column, so `P M ≥ 0` and plain NMF runs on the sketch.
# `P` is never stored: it is regenerated from its seed tile by tile.


# %%
def compressed_nmf(d: int) -> dict:
    t = time.perf_counter()
    sk = cf.sketch(M, n_components=d, kind="expander", seed=0).persist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = cf.nmf(sk, RANK, **NMF_OPTS)
    H = np.asarray(res.H)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RecoveryWarning)
        sparse = cf.recover(res, sk.operator, "nnlasso")
    exact = cf.recover(res, sk.operator, "lstsq-data", data=M)
    W_sparse, W_exact = sparse.compute(), exact.compute()
    return dict(
        d=d, sketch=sk, result=res, H=H, W_nnlasso=W_sparse, W_lstsq=W_exact,
        err_sketch=res.reconstruction_err_,
        err_nnlasso=cf.relative_error(M, W_sparse, H),
        err_lstsq=cf.relative_error(M, W_exact, H),
        nnlasso_ok=bool(sparse.certificate.ok),
        nnlasso_fit_residual=float(sparse.certificate.fit_residual),
        nnlasso_warnings=[str(w.message) for w in caught],
        seconds=time.perf_counter() - t,
    )


runs = {d: compressed_nmf(d) for d in SWEEP}
for d, run in runs.items():
    print(f"d={d:3d} ({n / d:.1f}×): sketch error {run['err_sketch']:.4f} | recovered: nnlasso "
          f"{run['err_nnlasso']:.4f} (certificate ok={run['nnlasso_ok']}), lstsq-data "
          f"{run['err_lstsq']:.4f} = {run['err_lstsq'] / err_raw:.3f}× uncompressed "
          f"({run['seconds']:.1f}s)")

main = runs[D]
if main["nnlasso_warnings"]:
    print("the nnlasso certificate said:", main["nnlasso_warnings"][0][:300], "...")

# %% [markdown]
# ## How close are the parts?
# Hungarian matching of the recovered parts to the uncompressed ones on |correlation| of both
# `W` (pixels) and `H` (images).

# %%
match = cf.match_factors(W_raw, main["W_lstsq"], H_raw, main["H"])
match_sparse = cf.match_factors(W_raw, main["W_nnlasso"], H_raw, main["H"])
print(f"d={D}: mean |corr| of parts (W) {match.mean_corr_W:.3f}, of image loadings (H) "
      f"{match.mean_corr_H:.3f}; nnlasso parts {match_sparse.mean_corr_W:.3f}")

# %% [markdown]
# ## Figures: parts as images, convergence, error vs compression

# %%
order = np.argsort(-np.linalg.norm(W_raw, axis=0) * np.linalg.norm(H_raw, axis=1))
W_aligned, _ = match.align(main["W_lstsq"], main["H"])
titles = [f"{j + 1} (|r|={match.corr_W[j]:.2f})" for j in order]
paths = {
    "uncompressed": os.path.join(OUT, "nmf_faces_uncompressed.png"),
    "compressed": os.path.join(OUT, "nmf_faces_compressed.png"),
    "convergence": os.path.join(OUT, "nmf_faces_convergence.png"),
    "compression": os.path.join(OUT, "nmf_faces_error_vs_compression.png"),
}
cf.plots.plot_factor_images(W_raw[:, order], image_shape, paths["uncompressed"],
                            titles=[str(j + 1) for j in order],
                            title=f"NMF parts, uncompressed ({n} pixels)")
cf.plots.plot_factor_images(W_aligned[:, order], image_shape, paths["compressed"], titles=titles,
                            title=f"compressed NMF (d={D}), recovered by lstsq-data")
cf.plots.plot_convergence(
    {"uncompressed": raw.history, f"sketch d={D}": main["result"].history},
    path=paths["convergence"], title="NMF relative error per iteration",
)
comp = [n / d for d in SWEEP]
cf.plots.plot_error_vs_compression(
    comp,
    {"nnlasso": [runs[d]["err_nnlasso"] for d in SWEEP],
     "lstsq-data": [runs[d]["err_lstsq"] for d in SWEEP]},
    paths["compression"], baseline={"uncompressed NMF": err_raw},
    title="faces: recovered-factor error vs compression",
)
for p in paths.values():
    print("saved", p)

# %%
result = {
    "example": "nmf_faces", "n": n, "m": m, "rank": RANK, "d": D, "compression": n / D,
    "err_uncompressed": err_raw, "err_sketch": main["err_sketch"],
    "err_nnlasso": main["err_nnlasso"], "err_lstsq": main["err_lstsq"],
    "error_ratio": main["err_lstsq"] / err_raw,
    "error_ratio_nnlasso": main["err_nnlasso"] / err_raw,
    "nnlasso_certificate_ok": main["nnlasso_ok"],
    "mean_abs_corr_W": match.mean_corr_W, "mean_abs_corr_H": match.mean_corr_H,
    "pngs": sorted(os.path.basename(p) for p in paths.values()),
}
print("RESULT " + json.dumps(result))
