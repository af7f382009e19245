"""Notebook-ready results: every result type has a short ``repr`` and an HTML table.

A repr used to print whole arrays and histories (3 600 characters for an NMFResult, 89 000 for a
DGDResult): here every result type is built for real, on data big enough that an array dump
would show, and its repr is bounded in lines and characters; its ``_repr_html_`` parses as a
balanced HTML table with the same rows.
"""

from __future__ import annotations

import warnings
from html.parser import HTMLParser

import numpy as np
import pytest

import cfact_dask as cf
from cfact_dask._runtime.display import MAX_ROWS
from cfact_dask.datasets import planted_nmf

MAX_LINES = 15
MAX_CHARS = 1500


class _Checker(HTMLParser):
    """Checks that tags nest and close, and collects the table's header cells."""

    VOID = {"br", "hr", "img", "meta", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.th: list[str] = []
        self._in_th = False

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)
        self._in_th = tag == "th"

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack}"
        self.stack.pop()
        self._in_th = False

    def handle_data(self, data):
        if self._in_th:
            self.th.append(data)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("display")
    rng = np.random.default_rng(0)
    M, _, _ = planted_nmf(800, 300, 4, density=0.05, noise=0.05, random_state=1)
    A = rng.standard_normal((600, 40)) @ rng.standard_normal((40, 30))
    T = np.einsum("ir,jr,kr->ijk", *[rng.random((s, 3)) for s in (30, 20, 40)])
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cf.ConvergenceWarning)
        run = cf.factorize_recover(M, 4, sketch=dict(n_components=200), out=str(tmp / "r.zarr"),
                                   reconstruct=True, progress=False)
        out.update(RunResult=run, Sketch=run.sketch, NMFResult=run.factors,
                   Recovery=run.recovery, Certificate=run.recovery.certificate,
                   ReconstructionStats=run.reconstruction)
        out["SVDResult"] = cf.svd(A, 5)
        out["SparsePCAResult"] = cf.sparse_pca(A, 4, max_iter=20)
        out["CPResult"] = cf.cp(T, 3, max_iter=30)
        out["DGDResult"] = cf.dgd_local(A, 4, n_nodes=4, max_iter=300)
        out["LpLowRankResult"] = cf.lp_lowrank(A, 4, p=1.0, max_iter=5)
        out["ProjectiveClusteringResult"] = cf.projective_clustering(A, 3, 4, n_init=1,
                                                                     max_iter=5)
    return out


TYPES = ["Sketch", "NMFResult", "Recovery", "Certificate", "RunResult", "SVDResult",
         "SparsePCAResult", "CPResult", "DGDResult", "LpLowRankResult",
         "ProjectiveClusteringResult", "ReconstructionStats"]


@pytest.mark.parametrize("name", TYPES)
def test_repr_is_short_and_html_renders(results, name):
    obj = results[name]
    assert type(obj).__name__ == name
    text = repr(obj)
    lines = text.splitlines()
    assert len(lines) <= MAX_LINES and len(text) <= MAX_CHARS, text
    assert lines[0] == f"<cfact {name}>"
    assert "[[" not in text and "array([" not in text  # no array dumps
    html = obj._repr_html_()
    checker = _Checker()
    checker.feed(html)
    checker.close()
    assert checker.stack == []  # every tag closed
    labels = [ln.strip().split("  ")[0] for ln in lines[1:]]
    assert checker.th == labels  # the same rows as the text
    assert 2 <= len(labels) <= MAX_ROWS


def test_key_figures_are_in_the_summaries(results):
    run = results["RunResult"]
    rec = repr(run.recovery)
    assert "nnlasso" in rec or "lstsq-data" in rec
    assert ("ok" in repr(run.recovery.certificate)) or ("NOT OK" in repr(run.recovery.certificate))
    assert "relative error of the sketch" in repr(run.factors)
    assert f"{run.report['factor']['sketch_relative_error']:.4g}" in repr(run)
    assert "seconds" in repr(run)  # timings
    assert "objective" in repr(results["SparsePCAResult"])  # not called an error
    assert f"{results['CPResult'].reconstruction_err_:.4g}" in repr(results["CPResult"])
    assert "consensus error" in repr(results["DGDResult"])


def test_repr_never_raises():
    """A half-built result (e.g. in a debugger) still has a repr."""
    broken = cf.ReconstructionStats(path="x", shape=(2, 2), chunks=None)  # type: ignore[arg-type]
    text = repr(broken)
    assert text.startswith("<cfact ReconstructionStats>") or "summary unavailable" in text
