"""Write the tested-setups table of docs/clients.md from the JUnit reports of the coding-tool
tests (``make clients-matrix``): each tool, the version installed, the route it used, the result
and when. Exits 1 when a test failed (after writing the table), 2 when a report is missing."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

from ethereal import connect

START, END = "<!-- clients-matrix:start -->", "<!-- clients-matrix:end -->"
NODE_MODULES = ROOT / "clients" / "node_modules"


def npm_version(package: str) -> str:
    manifest = NODE_MODULES / package / "package.json"
    return json.loads(manifest.read_text())["version"] if manifest.exists() else "not installed"


def pypi_version(python: str, package: str) -> str:
    done = subprocess.run(
        [python, "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else "not installed"


def results(reports: list[Path]) -> dict[str, tuple[str, float, str]]:
    """tool id → (pass/fail, seconds, test id) from the JUnit reports."""
    out: dict[str, tuple[str, float, str]] = {}
    for report in reports:
        for case in ET.parse(report).iter("testcase"):
            name = case.get("name", "")
            match = re.search(r"\[([a-z-]+)\]$", name)
            if not match:
                continue
            failed = case.find("failure") is not None or case.find("error") is not None
            skipped = case.find("skipped") is not None
            test_id = f"{case.get('classname', '').replace('.', '/')}.py::{name}"
            out[match.group(1)] = (
                "skipped" if skipped else "FAIL" if failed else "pass",
                float(case.get("time", 0.0)),
                test_id,
            )
    return out


def table(found: dict[str, tuple[str, float, str]], aider_python: str, when: str) -> str:
    lines = [
        "| Tool | Package | Version | Route | Result | Run time | Test | Date |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in connect.SETUPS:
        if s.id in found:
            result, seconds, test_id = found[s.id]
            if s.package == "aider-chat":
                version = pypi_version(aider_python, "aider-chat")
            else:
                version = npm_version(s.package)
            lines.append(
                f"| {s.name} | `{s.package}` | {version} | {s.route} | {result} | {seconds:.1f} s "
                f"| `{test_id}` | {when} |"
            )
        elif not s.tested:
            lines.append(f"| {s.name} | GUI editor | — | {s.route} | untested | — | — | — |")
        else:
            note = {
                "anthropic-sdk": "tests/e2e/test_anthropic_sdk.py",
                "openai-sdk": "tests/e2e/test_openai_sdk.py, test_responses_sdk.py",
            }.get(s.id, "no result")
            lines.append(
                f"| {s.name} | `{s.package}` | — | {s.route} | see {note} (`make test`) | — | — | — |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument(
        "--aider",
        default=str(ROOT / ".venv-aider" / "bin" / "python"),
        help="the Python of Aider's environment (for its version)",
    )
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "clients.md")
    args = parser.parse_args()
    missing = [r for r in args.reports if not r.exists()]
    if missing:
        print(f"clients-matrix: no report at {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    found = results(args.reports)
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    text = args.doc.read_text()
    if START not in text or END not in text:
        print(f"clients-matrix: {args.doc} has no {START} … {END} block", file=sys.stderr)
        return 2
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    args.doc.write_text(f"{head}{START}\n{table(found, args.aider, when)}{END}{tail}")
    failed = sorted(tool for tool, (result, _, _) in found.items() if result != "pass")
    print(
        f"clients-matrix: {len(found) - len(failed)} passed, {len(failed)} failed"
        + (f" ({', '.join(failed)})" if failed else "")
        + f"; table written to {args.doc}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
