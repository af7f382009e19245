"""Sparse recovery at n = 10^6 features (no dense P): planted k-sparse nonnegative W, noiseless.

    python benchmarks/bench_recover_scale.py

Writes benchmarks/results/recover_1e6.json (README: exact recovery in 10 passes with the
working-set LASSO).
"""
import json
import time
import warnings

import numpy as np
from distributed import Client, LocalCluster

import cfact_dask as cf
from cfact_dask.sketching.operators import make_operator

if __name__ == "__main__":
    n, r, k, d = 1_000_000, 10, 10, 400
    rng = np.random.default_rng(0)
    op = make_operator("expander", d, n, seed=0)
    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="4GiB", dashboard_address=None) as cl, Client(cl) as c:
        # planted k-sparse nonnegative W, built blockwise: only its nonzeros are held here
        import dask.array as da
        import scipy.sparse as sp
        rows = np.stack([rng.choice(n, k, replace=False) for _ in range(r)])
        vals = np.abs(rng.standard_normal((r, k)))
        Wsp = sp.csc_matrix((vals.ravel(), rows.ravel(), np.arange(0, r * k + 1, k)), shape=(n, r))
        W = da.from_array(Wsp.toarray(), chunks=(op.tile_size * 16, r))
        t0 = time.time(); Wt = op.matvec(W).compute(); t_mv = time.time() - t0
        t0 = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rec = cf.recover(Wt, op, "nnlasso", client=c)
        What = rec.W.compute(); t_rec = time.time() - t0
        err = np.linalg.norm(What - Wsp.toarray()) / np.linalg.norm(Wsp.toarray())
        out = {"n": n, "r": r, "k": k, "d": d, "matvec_s": t_mv, "recover_s": t_rec,
               "n_iter": rec.n_iter_, "relative_error_W": float(err),
               "fit_residual": rec.certificate.fit_residual}
        print(json.dumps(out))
        import os
        json.dump(out, open(os.path.join(os.path.dirname(__file__), "results", "recover_1e6.json"), "w"), indent=1)
