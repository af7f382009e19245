"""``python -m cfact_dask.cli``: the ``cfact`` command."""

from . import main

main()
