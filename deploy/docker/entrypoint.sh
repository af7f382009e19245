#!/bin/sh
# Entrypoint of the cfact-dask image: run the given command (tini is PID 1 in front of it).
#
# distributed no longer installs the hyphenated `dask-scheduler` / `dask-worker` commands; some
# deployment templates (older releases of the dask/dask Helm chart) still pass them as the first
# argument. Translate those to the `dask scheduler` / `dask worker` subcommands so such templates
# keep working with this image. Everything else is executed unchanged.
set -e
case "$1" in
    dask-scheduler) shift; set -- dask scheduler "$@" ;;
    dask-worker) shift; set -- dask worker "$@" ;;
esac
exec "$@"
