"""Old module paths that users' scripts import, kept working after the package's re-layout.

``import cfact_dask.nn`` (public, in ``__all__``) resolves to :mod:`cfact_dask.embed.nn` without a
warning. The other old paths (``cfact_dask.estimators_extra``, ``cfact_dask.datasets_embed``,
``cfact_dask.lp`` ...) resolve to the module that now holds the same code and emit a
:class:`DeprecationWarning` naming the new path. Old paths whose name is also a function the
package exports (``cfact_dask.svd``, ``.sketch``, ``.recover``, ``.nmf``, ``.cp``, ``.plan``,
``.dgd``, ``.sparse_pca``) are not aliased: importing them as modules would replace the function
on the package.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

__all__ = ["ALIASES", "install"]

#: old module path -> (new module path, deprecated?)
ALIASES: dict[str, tuple[str, bool]] = {
    "cfact_dask.nn": ("cfact_dask.embed.nn", False),
    "cfact_dask.estimators_extra": ("cfact_dask.estimators", True),
    "cfact_dask.datasets_embed": ("cfact_dask.embed.datasets", True),
    "cfact_dask.lp": ("cfact_dask.embed.lp", True),
    "cfact_dask.clustering": ("cfact_dask.embed.clustering", True),
    "cfact_dask.topology": ("cfact_dask.factor.consensus.topology", True),
    "cfact_dask.operators": ("cfact_dask.sketching.operators", True),
    "cfact_dask.job": ("cfact_dask.pipeline.job", True),
    "cfact_dask.cluster": ("cfact_dask._runtime.cluster", True),
    "cfact_dask.checkpoint": ("cfact_dask._runtime.checkpoint", True),
    "cfact_dask.inspect": ("cfact_dask.io", True),
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str, deprecated: bool) -> None:
        self.target = target
        self.deprecated = deprecated

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        if self.deprecated:
            warnings.warn(
                f"{spec.name} moved to {self.target}; import it from there (or use the names "
                f"cfact_dask exports). The old path will be removed in a future release.",
                DeprecationWarning, stacklevel=2)
        module = importlib.import_module(self.target)
        self._saved = {k: getattr(module, k) for k in ("__spec__", "__loader__", "__package__")}
        return module

    def exec_module(self, module: ModuleType) -> None:
        # already executed under its new name: undo the import system's relabelling of the
        # module (its __spec__ / __loader__ now name the old path)
        for k, v in getattr(self, "_saved", {}).items():
            setattr(module, k, v)


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path=None, target=None):  # noqa: ANN001
        hit = ALIASES.get(fullname)
        if hit is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(*hit))


_FINDER = _AliasFinder()


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_FINDER)
