"""Registries: one per extension point (sketch kinds, recovery methods, factorizations).

A registry maps a name to an entry (a small frozen spec object). The CLI's ``click.Choice``
lists, the job schema's allowed values and the planner read the registry when they run, so
adding an entry in one module makes it appear everywhere, with no other file edited::

    from cfact_dask.sketching.operators import SKETCH_KINDS
    SKETCH_KINDS.register("toy", ToyKind(...))

Entries registered by the package itself are in the order they were registered; a name can be
registered once (``replace=True`` to override, e.g. in tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from ..errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered name -> entry map for one extension point."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Add ``entry`` under ``name`` (``replace`` to override an existing one)."""
        if name in self._entries and not replace:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a toy entry clean up with this)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry of ``name``; :class:`ConfigError` naming the choices if there is none."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.what} {name!r}; choose one of {', '.join(self._entries)}"
            ) from None

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._entries)})"
