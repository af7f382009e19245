"""Pipeline commands: ``cfact run``, ``cfact demo``, ``cfact plan``, ``cfact recover``,
``cfact reconstruct``."""

from __future__ import annotations

import os
import time
from typing import Any

import click
import numpy as np

from ..recovery import RECOVERY_METHODS
from ._session import Session, session_options, with_session

__all__ = ["AutoOrPositive", "RecoveryMethodChoice", "demo", "plan_cmd", "reconstruct_cmd",
           "recover_cmd", "run"]


class AutoOrPositive(click.ParamType):
    """``auto`` or a number > 0 (checked when the command line is parsed, not deep in a solve)."""

    name = "auto|number"

    def convert(self, value: Any, param: Any, ctx: Any) -> str | float:
        if isinstance(value, float) or value == "auto":
            return value
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither 'auto' nor a number", param, ctx)
        if not (v > 0 and np.isfinite(v)):
            self.fail(f"{value!r} must be a finite number > 0 (or 'auto')", param, ctx)
        return v


class RecoveryMethodChoice(click.Choice):
    """The names of :data:`~cfact_dask.recovery.RECOVERY_METHODS`, read when the command line is
    parsed (and ``--help`` shown), so a method registered after import is accepted."""

    def __init__(self) -> None:
        super().__init__(RECOVERY_METHODS.names())

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        return RECOVERY_METHODS.names()

    @choices.setter
    def choices(self, value: Any) -> None:  # click.Choice.__init__ assigns; the registry rules
        pass


def _fmt_generic(report: dict[str, Any]) -> str:
    """The report of a method of the generic pipeline (svd, sparse-pca, cp, dgd-local, lp,
    messi): its factor line, its certificate's verdict, the reconstruction's error."""
    fac, cert = report.get("factor") or {}, report.get("certificate") or {}
    recon = report.get("reconstruction") or {}
    est = cert.get("estimated_relative_error")
    it = f", {fac['n_iter']} iterations" if fac.get("n_iter") else ""
    lines = [
        f"input      {report['input']}  shape {tuple(report['shape'])}",
        f"factor     {fac.get('method')}, rank {report['rank']}{it}",
        f"error      estimated relative error {'n/a' if est is None else f'{est:.4f}'}"
        f"{' (' + cert['basis'] + ')' if cert.get('basis') else ''}",
    ]
    if not cert.get("ok", True):
        lines.append("           [certificate: NOT OK] " + "; ".join(cert.get("messages") or []))
        if cert.get("fix"):
            lines.append(f"           fix: {cert['fix']}")
    if recon:
        lines.append(f"reconstruct relative error {recon['relative_error']:.4f} -> {recon['path']}")
    sec = report.get("seconds", {})
    lines.append("seconds    " + ", ".join(f"{k} {v:.1f}" for k, v in sec.items()))
    if report.get("out"):
        lines.append(f"output     {report['out']}")
    return "\n".join(lines)


def _fmt_report(report: dict[str, Any]) -> str:
    if "certificate" in report:
        return _fmt_generic(report)
    rec = report.get("recover") or {}
    recon = report.get("reconstruction") or {}
    sec = report.get("seconds", {})
    lines = [
        f"input      {report['input']}  shape {tuple(report['shape'])}",
        f"sketch     {report['sketch']['kind']}, d = {report['sketch']['n_components']} "
        f"({report['sketch']['compression']:.1f}x compression)",
        f"factor     {report['factor']['method']}{' (semi)' if report['factor']['semi'] else ''}"
        f", rank {report['rank']}, {report['factor']['n_iter']} iterations, relative error on "
        f"the sketch {report['factor']['sketch_relative_error']:.4f}",
    ]
    if rec:
        est = rec.get("estimated_relative_error")
        base = rec.get("holdout_baseline")
        est_s = "n/a" if est is None else f"{est:.4f}"
        base_s = "n/a" if base is None else f"{base:.4f}"
        flag = "" if rec.get("ok", True) else "  [certificate: NOT OK]"
        # lstsq-data measures its error on the data itself; the sparse methods estimate it on
        # the held-out sketch
        what = ("relative error (exact)" if rec["method"] == "lstsq-data"
                else "estimated relative error")
        # the exact pass's error IS the best reachable with its H (W solved exactly against the
        # data): the held-out estimate of that best (spread ~25 % at 32 rows) would only blur it
        reach = ("" if rec["method"] == "lstsq-data"
                 else f" (best reachable with this H: {base_s})")
        lines.append(f"recover    {rec['method']}: {what} {est_s}{reach}{flag}")
        refined = rec.get("refined")
        if refined:
            errs = refined["errors"]
            where = "in memory" if refined.get("in_memory") else f"{refined['passes']} pass(es)"
            lines.append(
                f"           H and W refitted against the data, {refined['rounds']} round(s) "
                f"{where}: relative error {errs[0]:.4f} -> {errs[-1]:.4f}"
            )
    if recon:
        lines.append(f"reconstruct relative error {recon['relative_error']:.4f} -> {recon['path']}")
    lines.append("seconds    " + ", ".join(f"{k} {v:.1f}" for k, v in sec.items()))
    if report.get("out"):
        lines.append(f"output     {report['out']}")
    return "\n".join(lines)


def _histories(result: Any) -> tuple[dict[str, list[float]], str]:
    """The convergence curves a run's result keeps (by method), and their axis label."""
    f = result.factors
    method = ((result.report or {}).get("factor") or {}).get("method", "nmf")

    def floats(xs: Any) -> list[float]:
        return [float(x) for x in (xs if xs is not None else [])]

    if method in ("nmf", "semi-nmf"):
        return {"relative error (sketch)": floats(getattr(f, "history", None))}, "relative error"
    if method == "sparse-pca":
        return {"objective": floats(getattr(f, "errors", None))}, "objective"
    if method == "cp":
        sketched = getattr(f, "mode", None) is not None
        label = "relative error (sketched tensor)" if sketched else "relative error"
        return {label: floats(getattr(f, "errors", None))}, "relative error"
    if method == "dgd-local":
        return ({"cost": floats(getattr(f, "cost_history", None)),
                 "consensus error": floats(getattr(f, "consensus_history", None))},
                "cost / consensus error")
    if method == "lp":
        return {"ℓp objective": floats(getattr(f, "objective_history", None))}, "objective"
    if method == "messi":
        return {"clustering cost": floats(getattr(f, "cost_history", None))}, "cost"
    return {}, ""


def _write_plots(result: Any, plots: str | None) -> list[str]:
    if not plots:
        return []
    from .. import plots as P

    os.makedirs(plots, exist_ok=True)  # checked by _check_plots before the run
    out = []
    curves, ylabel = _histories(result)
    curves = {k: v for k, v in curves.items() if v}
    if curves:
        path = os.path.join(plots, "convergence.png")
        P.plot_convergence(curves, ylabel=ylabel, path=path)
        out.append(path)
    if result.W is not None and result.W.shape[0] <= 2_000_000:
        path = os.path.join(plots, "factors.png")
        W = result.W.compute() if hasattr(result.W, "compute") else result.W
        P.plot_factor_heatmap(np.asarray(W), path=path)
        out.append(path)
    return out


def _check_plots(plots: str | None, inputs: list[Any], overwrite: bool) -> None:
    """The plots folder obeys the output policy: allowed root, never inside or around an input,
    and no file of the user's is replaced without --overwrite."""
    if not plots:
        return
    from .._runtime.outputs import check_allowed, check_no_overlap
    from ..errors import StoreExistsError

    check_allowed(plots, "plots folder")
    check_no_overlap(plots, inputs, "plots folder", fix="choose a --plots folder elsewhere")
    if os.path.exists(plots) and not os.path.isdir(plots):
        raise StoreExistsError(f"--plots {plots!r} is a file, not a folder; choose a folder")
    for name in ("convergence.png", "factors.png"):
        f = os.path.join(plots, name)
        if os.path.exists(f) and not overwrite:
            raise StoreExistsError(
                f"the plots folder {plots!r} already holds {name!r}; pass --overwrite to replace "
                f"it, or choose another --plots folder"
            )


@click.command("run")
@click.argument("job", type=click.Path())
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last stage.")
@click.option("--force-resume", is_flag=True,
              help="Resume even though the input's content changed since the run started.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing output store (only one cfact wrote).")
@click.option("--plots", default=None, type=click.Path(), help="Write PNG plots to this folder.")
@session_options
@with_session
def run(session: Session, job: str, resume: bool, force_resume: bool, overwrite: bool,
        plots: str | None) -> None:
    """Run the whole pipeline described by the YAML job file JOB."""
    from ..pipeline._run import run_job
    from ..pipeline.job import load_job

    cfg = load_job(job)
    _check_plots(plots, [cfg["input"]["path"], cfg["output"]["path"]], overwrite)
    res = run_job(cfg, client=session.client,
                  resume="force" if force_resume else resume, overwrite=overwrite,
                  progress=not session.quiet)
    files = _write_plots(res, plots)
    payload = dict(res.report)
    payload["plots"] = files
    session.report(payload, _fmt_report(res.report))


@click.command("demo")
@click.option("--n", default=2000, show_default=True, help="Features.")
@click.option("--m", default=2000, show_default=True, help="Samples.")
@click.option("--rank", default=10, show_default=True)
@click.option("--d", "d", default=400, show_default=True, help="Sketch size.")
@click.option("--seed", default=0, show_default=True)
@click.option("--dir", "workdir", default="cfact-demo", show_default=True, type=click.Path(),
              help="Folder for the generated input and the run store (replaced).")
@click.option("--plots", default=None, type=click.Path(), help="Write PNG plots to this folder.")
@session_options
@with_session
def demo(session: Session, n: int, m: int, rank: int, d: int, seed: int, workdir: str,
         plots: str | None) -> None:
    """Generate a planted sparse NMF dataset (Sharan et al.'s generator) into a local Zarr store and
    run sketch -> NMF -> recovery -> reconstruction on it, on an embedded local Dask cluster."""
    import dask.config

    from .._runtime.cluster import client_context
    from ..datasets import planted_nmf_zarr
    from ..metrics import match_factors
    from ..pipeline._run import factorize_recover

    os.makedirs(workdir, exist_ok=True)
    src = os.path.join(workdir, "input.zarr")
    out = os.path.join(workdir, "run.zarr")
    _check_plots(plots, [src, out], True)
    t0 = time.perf_counter()
    with dask.config.set({"cfact.cluster.embedded": "always"}), \
            client_context(session.client) as c:
        planted_nmf_zarr(src, n, m, rank, density=0.05, noise=0.1, random_state=seed,
                         chunks=(max(n // 4, 1), max(m // 4, 1)), overwrite=True, client=c,
                         progress=False)
        gen_s = time.perf_counter() - t0
        from ..io import open_array

        res = factorize_recover(
            open_array(src, variable="M"), rank,
            sketch=dict(n_components=d, kind="expander", seed=seed),
            factor=dict(random_state=seed), out=out, overwrite=True, reconstruct=True,
            client=c, progress=not session.quiet,
        )
        import zarr

        g = zarr.open_group(src, mode="r")
        W_true, H_true = np.asarray(g["W"][...]), np.asarray(g["H"][...])
        W_est = np.asarray(res.W.compute() if hasattr(res.W, "compute") else res.W)
        H_est = np.asarray(res.H.compute() if hasattr(res.H, "compute") else res.H)
    match = match_factors(W_true, W_est, H_true, H_est)
    report = dict(res.report)
    report["generated_seconds"] = gen_s
    report["total_seconds"] = time.perf_counter() - t0
    report["mean_corr_W"] = match.mean_corr_W
    report["mean_corr_H"] = match.mean_corr_H
    report["plots"] = _write_plots(res, plots)
    text = _fmt_report(res.report) + (
        f"\nvs truth   mean |corr| W {match.mean_corr_W:.4f}, H {match.mean_corr_H:.4f}"
        f"\ntotal      {report['total_seconds']:.1f} s (data generation {gen_s:.1f} s)"
    )
    session.report(report, text)


@click.command("plan")
@click.argument("job", type=click.Path())
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Workers to plan for (default: the cluster's, else config).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads per worker.")
@click.option("--memory-limit", default=None, help="Memory limit per worker, e.g. 4GiB.")
@session_options
@with_session
def plan_cmd(session: Session, job: str, workers: int | None, threads: int | None,
             memory_limit: str | None) -> None:
    """Print passes, bytes read, memory per task / worker and output sizes of JOB, computing
    nothing (with --scheduler: planned for that running cluster)."""
    from dask.utils import parse_bytes

    from ..pipeline._plan import plan

    try:
        limit = parse_bytes(memory_limit) if memory_limit else None
    except ValueError as e:
        raise click.BadParameter(f"{memory_limit!r} is not a size such as 4GiB",
                                 param_hint="--memory-limit") from e
    p = plan(job, client=session.client, n_workers=workers, threads_per_worker=threads,
             memory_limit=limit)
    session.report(p.to_dict(), str(p))


@click.command("recover")
@click.argument("store", type=click.Path())
@click.option("--method", type=RecoveryMethodChoice(), default="nnlasso",
              show_default=True)
@click.option("--data", default=None, help="The original data (for lstsq-data).")
@click.option("--sparsity", type=click.IntRange(min=1), default=None,
              help="k, nonzeros per column (omp).")
@click.option("--lam", type=AutoOrPositive(), default="auto", show_default=True,
              help="LASSO penalty (> 0) or 'auto'.")
@click.option("--refine", type=click.IntRange(min=0), default=0, show_default=True,
              help="lstsq-data: rounds refitting H and W against the data after the exact W "
                   "(each one more pass; stops once a round gains < 1 %); the refitted H is "
                   "stored with W.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing recovered group (and the reconstruction computed from "
                   "it).")
@session_options
@with_session
def recover_cmd(session: Session, store: str, method: str, data: str | None,
                sparsity: int | None, lam: str | float, refine: int, overwrite: bool) -> None:
    """Recover W from the sketch and factors groups of the run STORE into STORE/recovered."""
    import zarr

    from .._runtime.labels import labels_of_store
    from .._runtime.outputs import group_id, join, prepare_group
    from ..errors import InputError
    from ..factor._nmf import NMFResult
    from ..recovery import recover, save_recovery
    from ..sketching._sketch import Sketch

    sk = Sketch.from_zarr(store, "sketch")
    res = NMFResult.from_zarr(store, "factors", lazy=False)
    root = zarr.open_group(store, mode="r")
    has_holdout = "holdout" in root
    if method == "lstsq-data" and data is None:
        raise InputError("--method lstsq-data needs --data (the original data store)")
    reads = [join(store, g) for g in ("sketch", "factors", "holdout")] + ([data] if data else [])
    prepare_group(store, "recovered", overwrite=overwrite, inputs=reads,
                  what="recovered output", flag="--overwrite")  # before any compute
    holdout = None
    if has_holdout:
        ho = Sketch.from_zarr(store, "holdout")
        holdout = (ho.matrix, ho.operator)
    if refine and method != "lstsq-data":
        raise InputError(f"--refine applies to --method lstsq-data (it reads the data); "
                         f"drop it, or use --method lstsq-data --data ... (got {method})")
    rec = recover(res, sk.operator, method, data=data, sparsity=sparsity,
                  lam=lam, holdout=holdout, refine=refine if method == "lstsq-data" else 0,
                  client=session.client)
    save_recovery(store, rec, overwrite=overwrite,
                  upstream={g: group_id(store, g) for g in ("factors", "sketch", "holdout")},
                  labels=labels_of_store(store, "sketch"))
    cert = rec.certificate
    refined = (rec.params or {}).get("refined")
    session.report({"command": "recover", "store": store, "method": method,
                    "certificate": cert.to_dict(), "refined": refined},
                   f"recovered W {rec.W.shape} with {method} -> {store}/recovered; "
                   + (f"H and W refitted against the data in {refined['rounds']} round(s) "
                      f"({refined['passes']} pass(es)); " if refined else "")
                   + _certificate_text(cert))


def _certificate_text(cert: Any) -> str:
    """The certificate's figures, each named for what it is; absent ones are left out."""
    parts = []
    if cert.exact_error is not None:
        parts.append(f"relative error {cert.exact_error:.4f} (exact, from the data)")
    elif cert.holdout_error is not None:
        parts.append(f"estimated relative error {cert.holdout_error:.4f} (held-out sketch)")
    else:
        parts.append("no error estimate (no hold-out sketch in the store: rerun `cfact sketch`)")
    if cert.holdout_baseline is not None and cert.exact_error is None:
        parts.append(f"best reachable with this H {cert.holdout_baseline:.4f}")
    if cert.fit_residual is not None:
        parts.append(f"sketch fit residual {cert.fit_residual:.4f}")
    return ", ".join(parts) + ("" if cert.ok else " [certificate: NOT OK]")


@click.command("reconstruct")
@click.argument("store", type=click.Path())
@click.option("--like", required=True, help="The input data store (chunk grid, dims, coords).")
@click.option("--out", default=None, help="Target store (default: STORE, group reconstruction).")
@click.option("--compare/--no-compare", default=True, show_default=True,
              help="Compute errors against --like in the same pass.")
@click.option("--overwrite", is_flag=True)
@session_options
@with_session
def reconstruct_cmd(session: Session, store: str, like: str, out: str | None, compare: bool,
                    overwrite: bool) -> None:
    """Write W H (from STORE/recovered and STORE/factors) on the input's chunk grid."""
    from .._runtime.outputs import group_id
    from ..factor._nmf import NMFResult
    from ..reconstruction import reconstruct
    from ..recovery import load_recovery

    res = NMFResult.from_zarr(store, "factors", lazy=True)
    rec = load_recovery(store, None)  # refuses an incomplete or stale (older factors) group
    target, group = (out, None) if out else (store, "reconstruction")
    upstream = None if out else {g: group_id(store, g) for g in ("recovered", "factors")}
    # the H that goes with W: the factors group's, or the one the recovery refitted with it
    H = rec.H if rec.H is not None else res.H
    stats = reconstruct(rec.W, H, target, like=like,
                        compare_to=like if compare else None, group=group, overwrite=overwrite,
                        client=session.client, progress=not session.quiet, upstream=upstream)

    session.report({"command": "reconstruct", **stats.to_dict()},
                   f"wrote W H {tuple(stats.shape)} to {stats.path}"
                   + (f"; relative error {stats.relative_error:.4f}"
                      if stats.relative_error is not None else ""))
