"""Make clients/package-lock.json installable by `npm ci` from a registry that serves only this
platform's builds: drop from each package's ``optionalDependencies`` the platform packages the
lock holds no entry for (the registry answered 404 for them, so `npm install` left them out, and
`npm ci` then refuses the lock as out of sync). Run after `npm install --save-exact` in clients/."""

from __future__ import annotations

import json
import sys
from pathlib import Path

LOCK = Path(
    sys.argv[1]
    if len(sys.argv) > 1
    else Path(__file__).resolve().parent.parent / "clients" / "package-lock.json"
)

lock = json.loads(LOCK.read_text())
packages = lock["packages"]
dropped = []
for path, entry in packages.items():
    optional = entry.get("optionalDependencies") or {}
    nested = f"{path}/node_modules/" if path else "node_modules/"
    for name in list(optional):
        if nested + name not in packages and "node_modules/" + name not in packages:
            del optional[name]
            dropped.append(name)
LOCK.write_text(json.dumps(lock, indent=2) + "\n")
print(f"{LOCK}: dropped {len(dropped)} optional platform packages the registry does not serve")
