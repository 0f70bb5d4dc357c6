"""The apps depend in one direction: audit ← governance ← jobs ← add-ons (approvals, webhooks, examples,
mcp_server).

Walks every module of every app with ``ast`` and fails on an import that points up a layer, across
add-ons, or into the project package ``config`` — naming the file, the line and the import.
``common`` is below every app and imports none of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> layer; a package may import its own modules and any package of a lower layer.
LAYERS: dict[str, int] = {
    "common": 0,
    "audit": 1,
    "governance": 2,
    "jobs": 3,
    "approvals": 4,
    "webhooks": 4,
    "examples": 4,
    "mcp_server": 4,
}
PROJECT_SHELL = "config"


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in ``source``, at any depth (functions included)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def violations(package: str, path: str, source: str) -> list[str]:
    """Every import in ``source`` (a module of ``package``) that breaks the layering."""
    own = LAYERS[package]
    out: list[str] = []
    for line, module in imported_modules(source):
        top = module.split(".")[0]
        if top == PROJECT_SHELL:
            out.append(f"{path}:{line}: {package} imports the project shell {module!r}")
        elif top in LAYERS and top != package and LAYERS[top] >= own:
            out.append(f"{path}:{line}: {package} (layer {own}) imports {module!r} (layer {LAYERS[top]})")
    return out


def app_modules() -> list[tuple[str, Path]]:
    return [
        (package, path)
        for package in LAYERS
        for path in sorted((ROOT / package).rglob("*.py"))
        if "migrations" not in path.parts
    ]


def test_no_import_points_up_a_layer() -> None:
    # given every module of every app
    modules = app_modules()
    assert len(modules) > 40, "the walk found too few modules; is ROOT right?"
    # when their imports are checked against the layers
    problems = [
        v for package, path in modules
        for v in violations(package, str(path.relative_to(ROOT)), path.read_text())
    ]
    # then none points upward, across add-ons or into config
    assert problems == [], "upward imports:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("package", "source", "needle"),
    [
        ("audit", "from jobs.models import Job\n", "imports 'jobs.models'"),
        ("governance", "def f():\n    from jobs.registry import registry\n", "imports 'jobs.registry'"),
        ("jobs", "import approvals.services\n", "imports 'approvals.services'"),
        ("approvals", "from examples.models import ExternalRecord\n", "imports 'examples.models'"),
        ("jobs", "from config.celery import app\n", "project shell 'config.celery'"),
        ("common", "from audit.services import stamp_append\n", "imports 'audit.services'"),
    ],
)
def test_the_check_names_an_upward_import(package: str, source: str, needle: str) -> None:
    # given one module with one upward import; when checked; then it is named
    found = violations(package, "x.py", source)
    assert len(found) == 1 and needle in found[0], found


def test_downward_imports_pass() -> None:
    assert violations("approvals", "x.py", "from jobs.models import Job\nfrom audit.events import Event\n") == []
    assert violations("jobs", "x.py", "from common.errors import DomainError\nfrom governance.policy import x\n") == []


def test_jobctl_is_a_client_outside_the_platform() -> None:
    # given every module of the jobctl package (the client and command line)
    modules = sorted((ROOT / "jobctl").rglob("*.py"))
    assert modules, "no jobctl modules found"
    # then none imports Django, the project shell or an app: it talks to the platform over HTTP only
    outside = {"django", "rest_framework", "celery", PROJECT_SHELL, *LAYERS}
    problems = [
        f"{path.relative_to(ROOT)}:{line}: imports {module!r}"
        for path in modules
        for line, module in imported_modules(path.read_text())
        if module.split(".")[0] in outside
    ]
    assert problems == [], "jobctl imports the platform:\n" + "\n".join(problems)
