"""The rules of the house (docs/ARCHITECTURE.md), checked on the package source with
``ast``: module size, no private imports across modules, no module named like the function it
exports, no ``*_extra`` modules, no reaching into distributed's internals, and a CLI that imports
every subcommand normally."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import click
import pytest

import cfact_dask

PKG = Path(cfact_dask.__file__).parent
MAX_LINES = 800

#: modules still over the limit (none)
TOO_LONG_KNOWN: set[str] = set()

#: (importing module, imported private name) (none)
PRIVATE_IMPORTS_KNOWN: set[tuple[str, str]] = set()

#: modules named like a function they export (none)
SAME_NAME_KNOWN: set[str] = set()

#: reaching into distributed's internals: the consensus work replaces these by a worker plugin
INTERNALS = ("worker.handlers[", "client._gather")
INTERNALS_KNOWN: set[str] = set()


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(p: Path) -> str:
    return p.relative_to(PKG).as_posix()


def _dotted(p: Path) -> str:
    parts = ["cfact_dask", *p.relative_to(PKG).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(p: Path, node: ast.ImportFrom) -> str | None:
    """The absolute module of ``from X import ...`` in ``p`` (None outside cfact_dask)."""
    if node.level == 0:
        mod = node.module or ""
        return mod if mod == "cfact_dask" or mod.startswith("cfact_dask.") else None
    base = _dotted(p).split(".")
    if p.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_module(dotted: str) -> bool:
    rel = Path(*dotted.split(".")[1:])
    return (PKG / rel).with_suffix(".py").exists() or (PKG / rel / "__init__.py").exists()


def test_no_module_over_the_limit():
    long = {_rel(p): n for p in _modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    new = {k: v for k, v in long.items() if k not in TOO_LONG_KNOWN}
    assert not new, f"modules over {MAX_LINES} lines (split them along their seams): {new}"


def test_no_private_names_imported_across_modules():
    bad = []
    for p in _modules():
        rel = _rel(p)
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            src = _resolve(p, node)
            if src is None:
                continue
            for alias in node.names:
                name = alias.name
                if not name.startswith("_") or name.startswith("__"):
                    continue
                if _is_module(f"{src}.{name}"):
                    continue  # a private submodule of a package (re-exported by its __init__)
                if (rel, name) in PRIVATE_IMPORTS_KNOWN:
                    continue
                bad.append(f"{rel}:{node.lineno} imports {name} from {src}")
    assert not bad, ("private names imported from another module (make the name public in a "
                     "private module both import):\n" + "\n".join(bad))


def test_no_module_named_like_the_function_it_exports():
    bad = []
    for p in _modules():
        if p.name == "__init__.py":
            continue
        tree = ast.parse(p.read_text(encoding="utf-8"))
        funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
        exported = set()
        for n in tree.body:
            if isinstance(n, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets):
                exported = {e.value for e in getattr(n.value, "elts", [])
                            if isinstance(e, ast.Constant)}
        if p.stem in funcs & exported and _rel(p) not in SAME_NAME_KNOWN:
            bad.append(_rel(p))
    assert not bad, f"modules named like the function they export: {bad}"


def test_no_extra_modules():
    bad = [_rel(p) for p in _modules() if p.stem.endswith("_extra")]
    assert not bad, f"*_extra modules say nothing about what they hold: {bad}"


def test_no_reaching_into_distributed_internals():
    bad = []
    for p in _modules():
        if _rel(p) in INTERNALS_KNOWN:
            continue
        text = p.read_text(encoding="utf-8")
        bad += [f"{_rel(p)}: {s}" for s in INTERNALS if s in text]
    assert not bad, f"distributed internals used (use a WorkerPlugin / public API): {bad}"


def test_cli_imports_every_subcommand_normally():
    import cfact_dask.cli as cli_pkg

    init = PKG / "cli" / "__init__.py"
    tree = ast.parse(init.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not any("importlib" in n for n in names), "cli/__init__ uses importlib"
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            pytest.fail("cli/__init__ uses __import__")
    imported = {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.level == 1}
    registered = set(cli_pkg.cli.commands.values())
    for info in pkgutil.iter_modules([str(PKG / "cli")]):
        if info.name.startswith("_"):
            continue
        assert info.name in imported, f"cli/__init__ does not import cli/{info.name}.py"
        mod = importlib.import_module(f"cfact_dask.cli.{info.name}")
        cmds = [v for v in vars(mod).values()
                if isinstance(v, click.Command) and v.__module__ != "click.core"]
        for c in cmds:
            if getattr(c.callback, "__module__", None) == mod.__name__:
                assert c in registered, f"cfact_dask.cli.{info.name}.{c.name} is not registered"
