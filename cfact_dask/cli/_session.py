"""The one contract of every ``cfact`` command that computes: options, output and errors.

:func:`session_options` adds ``--scheduler``, ``--scheduler-file``, ``--json``, ``--quiet`` and
``-v/--verbose``; :func:`with_session` opens a :class:`Session` from them, hands it to the command
as its first argument and closes what it opened on every path, success or error.

What the terminal shows (issue 17):

* stdout holds the report only (JSON with ``--json``, which implies ``--quiet``);
* stderr holds progress: bars when it is a terminal, otherwise at most one plain line per stage;
  cfact's log lines without timestamps; warnings as one line ``warning: ...``; nothing from
  ``distributed`` (the embedded cluster's scheduler and nannies) unless ``-v``;
* per-iteration lines of the solvers (logged at DEBUG) only with ``-v``;
* an error is one paragraph ``Error: ...`` and exit code 1 (2 for usage errors, from click);
  ``-v`` shows the traceback of an unexpected one.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import click

__all__ = ["RegistryChoice", "Session", "cluster_options", "json_default",
           "parse_storage_options", "session_options", "storage_option", "with_session",
           "with_storage"]

_LIBRARY_LOGGER = "cfact_dask"


class RegistryChoice(click.Choice):
    """A ``click.Choice`` whose choices are a registry's names when the command line is parsed
    (and ``--help`` printed), so an entry registered after import is offered and accepted.

    Parameters
    ----------
    registry : Registry
        E.g. :data:`cfact_dask.sketching.operators.SKETCH_KINDS`.
    where : callable, optional
        ``where(entry) -> bool``: offer only these entries (e.g. methods with a CLI runner).
    """

    def __init__(self, registry: Any, where: Callable[[Any], bool] | None = None) -> None:
        self.registry = registry
        self.where = where
        super().__init__((), case_sensitive=True)

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        return tuple(n for n, e in self.registry.items() if self.where is None or self.where(e))

    @choices.setter
    def choices(self, value: Any) -> None:  # click.Choice.__init__ assigns it: read live instead
        pass


def storage_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--storage-option KEY=VALUE`` (repeatable): fsspec options for every remote URL."""
    return click.option(
        "--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
        help="fsspec option for remote stores (s3://...), e.g. endpoint_url=https://s3.example"
             ".org or profile=lab; repeatable; values are read as YAML scalars. Credentials are "
             "better left to the environment (AWS_ACCESS_KEY_ID ...).")(f)


def parse_storage_options(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``("a=1", "b.c=x")`` -> ``{"a": 1, "b": {"c": "x"}}`` (dotted keys nest)."""
    import yaml

    from ..errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--storage-option {key.strip() or item!r}: expected KEY=VALUE, e.g. "
                f"--storage-option endpoint_url=https://s3.example.org"
            )
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            parsed = value
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = parsed
    return out


def with_storage(f: Callable[..., Any]) -> Callable[..., Any]:
    """For commands without a :class:`Session`: apply ``--storage-option`` (and the retries
    and the environment's endpoint) to every remote URL the command opens."""

    @functools.wraps(f)
    def wrapper(*args: Any, storage_option: tuple[str, ...] = (), **kwargs: Any) -> Any:
        from .._runtime import storage
        from ..errors import CfactError

        try:
            options = parse_storage_options(storage_option)
        except CfactError as e:
            raise click.ClickException(str(e)) from e
        with storage.cli_scope(options):
            return f(*args, **kwargs)

    return storage_option(wrapper)


def session_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--scheduler`` / ``--scheduler-file`` / ``--json`` / ``--quiet`` / ``-v`` /
    ``--storage-option`` for a command."""
    f = storage_option(f)
    f = click.option("--verbose", "-v", is_flag=True,
                     help="Per-iteration lines, the cluster's own logs and tracebacks.")(f)
    f = click.option("--json", "as_json", is_flag=True,
                     help="Print a machine-readable JSON report on stdout (implies --quiet).")(f)
    f = click.option("--quiet", "-q", is_flag=True,
                     help="No progress and no log lines; warnings and errors only.")(f)
    f = click.option("--scheduler-file", type=click.Path(), default=None,
                     help="Scheduler file of a running Dask cluster.")(f)
    f = click.option("--scheduler", default=None,
                     help="Address of a running Dask scheduler (tcp://host:8786, tls://...); "
                          "default: $DASK_SCHEDULER_ADDRESS, else an embedded local cluster "
                          "for large inputs.")(f)
    return f


#: the historical name (kept for code that imports it from ``cfact_dask.cli``)
cluster_options = session_options


class _Format(logging.Formatter):
    """``message`` for progress lines, ``warning: message`` / ``error: message`` otherwise."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.ERROR:
            msg = f"error: {msg}"
        elif record.levelno >= logging.WARNING:
            msg = f"warning: {msg}"
        return " ".join(msg.split()) if record.levelno >= logging.WARNING else msg


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    # one line, no Python source: the message of a cfact warning already says what to do
    click.echo("warning: " + " ".join(str(message).split()), err=True)


class Session:
    """What a command needs to run: the client (if any), output mode and a report printer.

    Everything it changes (log levels and handlers, ``warnings.showwarning``, the
    ``cfact.progress`` setting) is restored by :meth:`close`.
    """

    def __init__(self, scheduler: str | None, scheduler_file: str | None, quiet: bool,
                 as_json: bool, verbose: bool = False,
                 storage_options: dict[str, Any] | None = None) -> None:
        import dask.config

        self.as_json = as_json
        self.quiet = quiet or as_json
        self.verbose = verbose and not self.quiet
        self.client: Any = None
        self._restore: list[Callable[[], None]] = []
        self._quiet_logs()
        cfg = dask.config.set({"cfact.progress": not self.quiet})
        self._restore.append(lambda: cfg.__exit__(None, None, None))
        if scheduler is None and scheduler_file is None:
            # set by the dask-kubernetes operator for DaskJob runners, and by many batch setups
            scheduler = os.environ.get("DASK_SCHEDULER_ADDRESS") or None
        from .._runtime.cluster import connect

        try:
            self.client = connect(scheduler=scheduler, scheduler_file=scheduler_file)
        except BaseException:
            self.close()
            raise
        if self.client is not None and not self.quiet:
            click.echo(f"connected to {self.client.scheduler.address}; dashboard: "
                       f"{self.client.dashboard_link}", err=True)
        # --storage-option (and the environment's endpoint, retries) for every remote URL the
        # command opens; left by close()
        from .._runtime import storage

        scope = storage.cli_scope(storage_options)
        scope.__enter__()
        self._restore.append(lambda: scope.__exit__(None, None, None))

    # ------------------------------------------------------------------ terminal
    def _quiet_logs(self) -> None:
        import distributed  # noqa: F401  (configures its loggers on import: do that first)

        lib = logging.getLogger(_LIBRARY_LOGGER)
        level = logging.WARNING if self.quiet else logging.DEBUG if self.verbose else logging.INFO
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Format())
        old = (lib.level, lib.propagate)
        lib.addHandler(handler)
        lib.setLevel(level)
        lib.propagate = False  # the root logger may have a handler of its own: no doubles

        def restore_lib() -> None:
            lib.removeHandler(handler)
            lib.setLevel(old[0])
            lib.propagate = old[1]

        self._restore.append(restore_lib)
        # the embedded cluster's scheduler and nannies log at INFO into this process; worker
        # processes read the same setting from the environment when they start
        # every distributed.* logger: dask's logging config gives some of them (distributed.client)
        # levels of their own, which a level on the parent does not override. Not even ERROR
        # without -v: distributed logs its own races (a client reconnecting while the run stops)
        # with tracebacks; cfact reports what failed as one paragraph
        names = ["distributed"] + [n for n in logging.root.manager.loggerDict
                                   if n.startswith("distributed.")]
        saved = {n: logging.getLogger(n).level for n in names}
        for n in names:
            logging.getLogger(n).setLevel(logging.WARNING if self.verbose else logging.CRITICAL)
        # the worker processes too: at ERROR a worker whose heartbeat races the scheduler's
        # shutdown on a loaded machine printed a 30-line traceback after the report (seen in
        # .ci/run); what fails in a worker reaches the client as the task's error anyway
        env_key = "DASK_LOGGING__DISTRIBUTED"
        env_old = os.environ.get(env_key)
        os.environ[env_key] = "warning" if self.verbose else "critical"

        def restore_dist() -> None:
            for n, lvl in saved.items():
                logging.getLogger(n).setLevel(lvl)
            if env_old is None:
                os.environ.pop(env_key, None)
            else:
                os.environ[env_key] = env_old

        self._restore.append(restore_dist)
        old_show = warnings.showwarning
        warnings.showwarning = _show_warning

        def restore_warnings() -> None:
            warnings.showwarning = old_show

        self._restore.append(restore_warnings)

    def report(self, payload: dict[str, Any], text: str) -> None:
        """The command's result on stdout: ``payload`` as JSON with ``--json``, else ``text``."""
        if self.as_json:
            click.echo(json.dumps(payload, indent=2, default=json_default))
        else:
            click.echo(text)

    def close(self) -> None:
        """Close the client this session opened and undo its terminal settings (idempotent)."""
        client, self.client = self.client, None
        try:
            if client is not None:
                client.close()
        finally:
            while self._restore:
                self._restore.pop()()


def json_default(o: Any) -> Any:
    from .._runtime.jsonattrs import json_default as _default

    return _default(o)


def _paragraph(e: BaseException) -> str:
    from .._runtime.storage import redact
    from ..errors import CfactError

    text = redact(" ".join(str(e).split())) or "(no message)"  # never a credential
    if isinstance(e, CfactError | OSError | ValueError | Warning):
        return f"{type(e).__name__}: {text}"
    return (f"{type(e).__name__}: {text} (this looks like a bug in cfact; rerun with -v for "
            f"the traceback and report it)")


def with_session(f: Callable[..., Any]) -> Callable[..., Any]:
    """Open a :class:`Session` from the session options, pass it first, close it on every path.

    Any error becomes one paragraph and exit code 1 (``-v`` re-raises unexpected ones with their
    traceback); click's own usage errors keep exit code 2.
    """

    @functools.wraps(f)
    def wrapper(scheduler: str | None, scheduler_file: str | None, quiet: bool, as_json: bool,
                verbose: bool, storage_option: tuple[str, ...] = (), **kwargs: Any) -> Any:
        from ..errors import CfactError

        session = None
        try:
            session = Session(scheduler, scheduler_file, quiet, as_json, verbose,
                              parse_storage_options(storage_option))
            return f(session, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except (CfactError, OSError) as e:
            # disk full, permissions, a vanished mount, an unreachable scheduler: the message
            # already says where and what to do; a traceback would bury it
            raise click.ClickException(_paragraph(e)) from e
        except Exception as e:
            if verbose:
                raise
            raise click.ClickException(_paragraph(e)) from e
        finally:
            if session is not None:
                session.close()

    return wrapper
