"""The ``cfact`` command line (also ``dask cfact ...`` through the ``dask_cli`` entry point).

The click group and :func:`main` live here; every subcommand lives in the module of its stage
(:mod:`.sketch`, :mod:`.factor`, :mod:`.consensus`, :mod:`.embed`, :mod:`.pipeline`) and is
imported normally, so a module that fails to import is a broken install that says so instead of
a command that silently disappears. Every computing command takes the options of
:mod:`._session` (``--scheduler``, ``--scheduler-file``, ``--json``, ``--quiet``, ``-v``).
"""

from __future__ import annotations

import os
import sys

import click

from .. import __version__

# one helper for every computing command (see _session); re-exported under the old names
from ._session import (
    Session,
    cluster_options,
    parse_storage_options,
    session_options,
    storage_option,
    with_session,
    with_storage,
)

__all__ = ["Session", "cli", "cluster_options", "main", "parse_storage_options",
           "session_options", "storage_option", "with_session", "with_storage"]


@click.group(name="cfact")
@click.version_option(__version__, prog_name="cfact")
def cli() -> None:
    """cfact: compressed low-rank factorization of chunked data with Dask."""


# the subcommands, in the order of the data's way (sketch -> factor -> recover -> reconstruct)
from .consensus import factor_dgd  # noqa: E402
from .embed import compress_embedding  # noqa: E402
from .factor import factor_cmd  # noqa: E402
from .pipeline import demo, plan_cmd, reconstruct_cmd, recover_cmd, run  # noqa: E402
from .sketch import inspect_cmd, sketch_cmd  # noqa: E402

for _cmd in (sketch_cmd, inspect_cmd, factor_cmd, factor_dgd, compress_embedding, run, demo,
             plan_cmd, recover_cmd, reconstruct_cmd):
    cli.add_command(_cmd)
del _cmd


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    args = sys.argv[1:] if argv is None else argv
    try:
        cli.main(args=argv, prog_name="cfact")
    finally:
        if "-v" not in args and "--verbose" not in args:
            _silence_distributed()


def _silence_distributed() -> None:
    """After the command: distributed's client finalizers log their shutdown races (a reconnect
    while the interpreter exits) with tracebacks; the command has already said what happened,
    so nothing of distributed's reaches the terminal after it (``-v`` keeps them)."""
    import logging

    for name in ["distributed", *logging.root.manager.loggerDict]:
        if name == "distributed" or name.startswith("distributed."):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)


if __name__ == "__main__":  # python -m cfact_dask.cli (see __main__.py)
    main()
