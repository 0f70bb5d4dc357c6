"""Benchmark scenarios: every public module here with a ``run(ctx)`` function is one.

A scenario module defines::

    ORDER = 10                      # optional: position in the default run (lower first, default 100)
    DESCRIPTION = "one line"        # optional: shown by ``python -m bench --list``

    def run(ctx: bench.harness.Ctx) -> list[bench.harness.Row]: ...

Its name on the command line (``--scenarios``) is the module name. Modules are imported after
Django is set up, so they may import models and services at the top.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def discover() -> dict[str, ModuleType]:
    """Every scenario module, in run order (``ORDER``, then name)."""
    found: list[tuple[int, str, ModuleType]] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if callable(getattr(module, "run", None)):
            found.append((int(getattr(module, "ORDER", 100)), info.name, module))
    return {name: module for _, name, module in sorted(found, key=lambda t: (t[0], t[1]))}
