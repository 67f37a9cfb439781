"""No model fact or price multiplier lives in code: ``python/ethereal/models/models.toml`` holds
them all (issue 20: model knowledge in code goes stale with every release).

Every ``.py`` under ``python/ethereal/`` is parsed with ``ast`` and its code (not its comments or
docstrings) is searched for:

- a **model id**: a string constant holding ``claude-<word or digit>…`` (the bare prefix
  ``claude-``, which the registry's name handling strips and adds, is not a model fact);
- a **family name in code**: a string constant in which one of the registry's families (read
  from the data: every model's ``family`` and ``[provisional].families``) appears as a word,
  e.g. ``r"claude-(opus|sonnet)-(\\d+)"`` or ``family == "haiku"``;
- a **price multiplier or limit**: a number equal to one of the data's multipliers (``[defaults]``
  and each card's ``batch``/``fast``/``geo``) bound to a pricing name, or equal to one of its
  context windows / output caps / ``[defaults].max_tokens`` bound to a limit name. "Bound to" is
  the name the number is given to: the assignment target, keyword, dict key, parameter, the
  ``.get(key, default)`` key, or a name it is multiplied or compared with. A timeout of 2.0 or a
  histogram bucket of 0.1 is not a multiplier and is not reported.

The other files shipped in the package (console scripts and pages, SQL, Lua) are searched for
model ids in their text. The failure message lists each finding with its file and line, as a
grep would. ``ALLOWED`` holds the reviewed exceptions, each with its reason.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parents[2] / "python" / "ethereal"
DATA = PACKAGE / "models" / "models.toml"
TEXT_SUFFIXES = {".js", ".html", ".css", ".sql", ".lua", ".txt", ".md"}
# model facts carried by data files that are not code (measurements, recordings)
DATA_FILES = {"dashboard/accuracy.json"}
MODEL_ID = re.compile(r"claude-(?:\d|[a-z]+-\d)")  # claude-3-…, claude-opus-5…: not claude-code
PRICING_NAME = re.compile(
    r"pric|cost|cache|multipl|premium|discount|batch|fast|speed|geo|usd|card|tier|"
    r"(?<!_)rate(?!_?limit)",
    re.IGNORECASE,
)
LIMIT_NAME = re.compile(r"context|window|max_tokens|max_output|output_cap|limit", re.IGNORECASE)

# (path relative to python/ethereal, the finding's text): why it is not a model fact
ALLOWED: dict[tuple[str, str], str] = {
    (
        "dashboard/estimator.py",
        "model limit 1000000 for MAX_OUTPUT",
    ): "the estimator form's bound on the output tokens a user may type, not a model's cap",
}


def data() -> dict[str, Any]:
    with open(DATA, "rb") as fh:
        return tomllib.load(fh)


def facts() -> tuple[re.Pattern[str], set[float], set[int]]:
    table = data()
    families = {m["family"] for m in table["models"] if m.get("family")} | set(
        table["provisional"]["families"]
    )
    family = re.compile(r"(?<![a-z])(" + "|".join(sorted(families)) + r")(?![a-z])", re.IGNORECASE)
    multipliers = {float(v) for v in table["defaults"].values() if isinstance(v, float)}
    for model in table["models"]:
        for card in model.get("prices", []):
            multipliers.update(
                float(card[k]) for k in ("batch", "fast") if isinstance(card.get(k), int | float)
            )
            multipliers.update(float(v) for v in card.get("geo", {}).values())
    multipliers -= {0.0, 1.0}
    limits = {int(table["defaults"][k]) for k in ("max_tokens", "context_window") if k in table["defaults"]}
    for model in table["models"]:
        limits.update(
            int(model[k]) for k in ("context_window", "max_output", "batch_max_output") if k in model
        )
    # the smaller caps of retired models (4,096) are every-day numbers: only today's sizes are facts
    return family, multipliers, {n for n in limits if n >= 8192}


def docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                out.add(id(first.value))
    return out


def names_in(node: ast.AST) -> Iterator[str]:
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            yield n.id
        elif isinstance(n, ast.Attribute):
            yield n.attr
        elif isinstance(n, ast.Constant) and isinstance(n.value, str):
            yield n.value


def bound_names(node: ast.AST, parents: dict[int, ast.AST]) -> list[str]:
    """The names a number is given to (see the module docstring); empty if none."""
    out: list[str] = []
    child = node
    while True:
        parent = parents.get(id(child))
        if parent is None or (
            isinstance(parent, ast.stmt)
            and not isinstance(parent, ast.Assign | ast.AnnAssign | ast.AugAssign | ast.Return)
        ):
            return out
        if isinstance(parent, ast.keyword):
            return [*out, parent.arg or ""]
        if isinstance(parent, ast.Dict):
            for key, value in zip(parent.keys, parent.values, strict=True):
                if value is child and key is not None:
                    return [*out, *names_in(key)]
            return out
        if isinstance(parent, ast.Call):  # d.get("cache_read", 0.1), Fraction("1.25")
            if child is parent.func:
                return out
            fn = parent.func
            if isinstance(fn, ast.Attribute) and fn.attr in ("get", "setdefault", "pop"):
                return [*out, *(n for a in parent.args if a is not child for n in names_in(a))]
            if isinstance(fn, ast.Name) and fn.id in ("Fraction", "Decimal", "float"):
                child = parent
                continue
            return out
        if isinstance(parent, ast.arguments):
            args = [*parent.posonlyargs, *parent.args]
            for arg, default in zip(args[len(args) - len(parent.defaults) :], parent.defaults, strict=True):
                if default is child:
                    return [*out, arg.arg]
            for arg, kw in zip(parent.kwonlyargs, parent.kw_defaults, strict=True):
                if kw is child:
                    return [*out, arg.arg]
            return out
        if isinstance(parent, ast.Assign):
            return [*out, *(n for t in parent.targets for n in names_in(t))]
        if isinstance(parent, ast.AnnAssign | ast.AugAssign):
            return [*out, *names_in(parent.target)]
        if isinstance(parent, ast.Return):
            return out
        if isinstance(parent, ast.BinOp | ast.Compare | ast.BoolOp | ast.IfExp):
            out.extend(
                n
                for operand in ast.iter_child_nodes(parent)
                if operand is not child
                for n in names_in(operand)
            )
        child = parent


def multiplier(node: ast.AST, parents: dict[int, ast.AST]) -> float | None:
    """The number a node writes as a multiplier could be: a float literal, ``Fraction("1.25")``,
    ``Decimal("0.1")``, ``Fraction(5, 4)``, or an integer a value is multiplied by (an integer
    elsewhere is an index, a count or a divisor)."""
    parent = parents.get(id(node))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("Fraction", "Decimal")
    ):
        args = node.args
        if len(args) == 2 and all(isinstance(a, ast.Constant) and type(a.value) is int for a in args):
            num, den = (a.value for a in args)  # type: ignore[attr-defined]
            return num / den if den else None
        if len(args) == 1 and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
            try:
                return float(args[0].value)
            except ValueError:
                return None
        return None
    if not isinstance(node, ast.Constant) or isinstance(node.value, bool):
        return None
    if isinstance(node.value, float):
        return node.value
    if isinstance(node.value, int) and isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Mult):
        return float(node.value)
    return None


def findings() -> list[str]:
    family, multipliers, limits = facts()
    out: list[str] = []
    for path in sorted(PACKAGE.rglob("*")):
        rel = path.relative_to(PACKAGE).as_posix()
        if not path.is_file() or path == DATA or rel in DATA_FILES or "/vendor/" in f"/{rel}":
            continue
        if path.suffix in TEXT_SUFFIXES:
            for no, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if MODEL_ID.search(line):
                    out.append(f"{rel}:{no}: model id: {line.strip()[:120]}")
            continue
        if path.suffix != ".py":
            continue
        source = path.read_text()
        tree = ast.parse(source, str(path))
        docs = docstrings(tree)
        parents = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if id(node) in docs or not isinstance(node, ast.Constant | ast.Call):
                continue
            where = f"{rel}:{node.lineno}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if MODEL_ID.search(node.value):
                    out.append(f"{where}: model id: {node.value[:120]!r}")
                elif family.search(node.value):
                    out.append(f"{where}: model family: {node.value[:120]!r}")
            value = multiplier(node, parents)
            if value is not None and value in multipliers:
                bound = [n for n in bound_names(node, parents) if PRICING_NAME.search(n)]
                if bound:
                    out.append(
                        f"{where}: price multiplier {value:g} for {', '.join(bound[:3])}: "
                        f"{ast.get_source_segment(source, node)}"
                    )
            if isinstance(node, ast.Constant) and type(node.value) is int and node.value in limits:
                bound = [n for n in bound_names(node, parents) if LIMIT_NAME.search(n)]
                if bound:
                    out.append(f"{where}: model limit {node.value} for {', '.join(bound[:3])}")
    return [f for f in out if (f.split(":", 1)[0], f.split(": ", 1)[1]) not in ALLOWED]


def test_no_model_fact_or_multiplier_in_code() -> None:
    found = findings()
    assert not found, (
        "model facts belong in python/ethereal/models/models.toml, not in code "
        f"({len(found)} found):\n" + "\n".join(found)
    )


def test_the_search_finds_what_it_looks_for(tmp_path: Path, monkeypatch: Any) -> None:
    """The search is not vacuous: planted facts of each kind are found, and their look-alikes
    (a timeout of 2.0, a bare ``claude-`` prefix, a docstring naming a model) are not."""
    planted = tmp_path / "ethereal"
    (planted / "models").mkdir(parents=True)
    (planted / "models" / "models.toml").write_bytes(DATA.read_bytes())
    (planted / "pricing.py").write_text(
        '"""Opus 5.5 is claude-opus-5-5 (a docstring: not code)."""\n'
        "import re\n"
        'FAMILY = re.compile(r"claude-(opus|sonnet)-(\\d+)")\n'
        'DEFAULT = "claude-sonnet-4-6"  # a comment naming claude-haiku-4-5 is not code\n'
        "CACHE_WRITE = 1.25\n"
        "def price(rates, usage, timeout=2.0):\n"
        '    read = rates.get("cache_read", 0.1)\n'
        '    return usage.input * rates.input * 1.1 if usage.geo == "us" else rates.input * 2 * len(usage.fast)\n'
        "BATCH = Fraction(1, 2)\n"
        "ROWS = [row[2] for row in usage.costs]\n"
        "def cap(max_tokens=128_000):\n"
        '    return "claude-" + str(max_tokens)\n'
        "_FIRST_WINDOW = 4096\n"
    )
    (planted / "page.js").write_text('const MODEL = "claude-fable-5-2";\n')
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", planted)
    monkeypatch.setattr(sys.modules[__name__], "DATA", planted / "models" / "models.toml")
    found = "\n".join(findings())
    for expected in (
        "pricing.py:3: model family",
        "pricing.py:4: model id",
        "pricing.py:5: price multiplier 1.25",
        "pricing.py:7: price multiplier 0.1",
        "pricing.py:8: price multiplier 1.1",
        "pricing.py:8: price multiplier 2",
        "pricing.py:9: price multiplier 0.5",
        "pricing.py:11: model limit 128000",
        "page.js:1: model id",
    ):
        assert expected in found, (expected, found)
    for absent in (
        "pricing.py:1:",
        "2.0",
        "pricing.py:10:",
        "pricing.py:12:",
        "pricing.py:13:",
        "pricing.py:14:",
    ):
        assert absent not in found, (absent, found)
