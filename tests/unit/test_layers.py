"""No module imports from a layer above its own (issue 25: folders as layers).

``LAYERS`` is the picture at the top of the README's "How a request flows", lowest first: each
layer a list of modules and packages under ``ethereal`` (a package stands for every module in it).
Every ``.py`` under ``python/ethereal/`` is parsed with ``ast`` and each ``import`` and
``from … import`` in it is checked, wherever it is written: at the top, under
``if TYPE_CHECKING:`` or inside a function (a late import is still a dependency). A module may
import from its own layer and any layer below; the failure names each import from above, and
each module that belongs to no layer.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "python" / "ethereal"
README = Path(__file__).resolve().parents[2] / "README.md"

LAYERS: list[tuple[str, list[str]]] = [
    (
        "base",
        [
            "__init__",
            "_native",
            "errors",
            "ids",
            "keys",
            "lifeline",
            "limits.plans",  # the plan tables settings parses (limits/ applies them); imports nothing
            "paths",
            "redisconn",
            "secretbox",
            "settings",
            "usage",
            "wire",
        ],
    ),
    ("data", ["models", "storage"]),
    (
        "domain",
        [
            "alerts",
            "auth",
            "connect",
            "guards",
            "keychanges",
            "limits",
            "metering",
            "observability",
            "session",
            "spend",
            "upstream",
        ],
    ),
    ("services", ["gateway"]),
    # batches/ sends each item of a batch through the pipeline, so it sits beside it, not below
    ("pipeline", ["adapters", "batches", "lifecycle", "pipeline"]),
    ("http", ["admin", "api", "dashboard"]),
    ("edge", ["__main__", "app", "cli", "observing", "server", "serving", "sim"]),
]


def module_name(path: Path, root: Path = PACKAGE) -> str:
    """``api/common.py`` → ``api.common``; a package's ``__init__.py`` is the package's name."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    """The layer of the longest table entry that is ``module`` or a package holding it."""
    best, index = -1, None
    for i, (_, names) in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, index = len(name), i
    return index


def imported(module: str, source: str, is_package: bool, known: set[str]) -> list[str]:
    """The ``ethereal`` modules ``source`` imports (names relative to ``ethereal``), wherever the
    import is written. ``from ethereal.x import y`` counts as ``x.y`` when that is a module."""
    here = module.split(".") if is_package else module.split(".")[:-1]
    if module == "__init__":
        here = []
    out: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [a.name.removeprefix("ethereal.") for a in node.names if a.name.startswith("ethereal.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module == "ethereal" or (node.module or "").startswith("ethereal."):
                target = (node.module or "").removeprefix("ethereal").removeprefix(".")
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                out.append(sub if sub in known else target or "__init__")
    return out


def violations(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """Each import from a higher layer and each module in no layer, as one line."""
    known = set(sources) | {"_native"}
    found: list[str] = []
    for module, (source, is_package) in sorted(sources.items()):
        mine = layer_of(module)
        if mine is None:
            found.append(f"{module}: in no layer")
            continue
        for target in dict.fromkeys(imported(module, source, is_package, known)):
            theirs = layer_of(target)
            if theirs is None:
                found.append(f"{module} -> {target}: in no layer")
            elif theirs > mine:
                found.append(f"{module} -> {target} ({LAYERS[theirs][0]} is above {LAYERS[mine][0]})")
    return found


def package_sources() -> dict[str, tuple[str, bool]]:
    return {
        module_name(path): (path.read_text(encoding="utf-8"), path.name == "__init__.py")
        for path in PACKAGE.rglob("*.py")
    }


def test_no_module_imports_from_a_layer_above() -> None:
    found = violations(package_sources())
    assert not found, "imports against the layers:\n" + "\n".join(found)


def test_every_table_entry_exists() -> None:
    sources = package_sources()
    missing = [
        name
        for _, names in LAYERS
        for name in names
        if name != "_native" and not any(m == name or m.startswith(name + ".") for m in sources)
    ]
    assert not missing, f"the table names what is not in the package: {missing}"


def test_the_readme_draws_the_same_layers() -> None:
    """The README's picture ("- **layer**: `folder/`, `module.py`, …", top to bottom) is this table."""
    drawn: list[tuple[str, list[str]]] = []
    for line in README.read_text(encoding="utf-8").split("## How a request flows")[1].splitlines():
        match = re.fullmatch(r"- \*\*(\w+)\*\*: (.+)", line)
        if match:
            names = re.findall(r"`([^`]+)`", match[2])
            drawn.append(
                (match[1], sorted(n.removesuffix("/").removesuffix(".py").replace("/", ".") for n in names))
            )
    table = [(layer, sorted(n for n in names if n != "__init__")) for layer, names in reversed(LAYERS)]
    assert drawn == table


def test_the_check_catches_an_import_from_above() -> None:
    # a domain module reaching up into the HTTP layer, once at the top, once under TYPE_CHECKING,
    # once inside a function; and a module the table does not place
    planted = {
        "upstream.planted": (
            "from typing import TYPE_CHECKING\n"
            "from ethereal.api.common import read_body\n"
            "if TYPE_CHECKING:\n"
            "    from ethereal.app import Ethereal\n"
            "def late():\n"
            "    from ethereal import pipeline\n",
            False,
        ),
        "api.common": ("", False),
        "app": ("", False),
        "pipeline": ("", False),
        "nowhere": ("import ethereal.errors\n", False),
    }
    assert violations(planted) == [
        "nowhere: in no layer",
        "upstream.planted -> api.common (http is above domain)",
        "upstream.planted -> app (edge is above domain)",
        "upstream.planted -> pipeline (pipeline is above domain)",
    ]
