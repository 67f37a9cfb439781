"""``ethereal``: serve, sim, keys, upstream, models, migrate."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ethereal.settings import Settings, SettingsError, load_settings

BANNER_WIDTH = 78


def _loud(lines: list[str]) -> None:
    bar = "!" * BANNER_WIDTH
    print(bar, file=sys.stderr)
    for line in lines:
        print(f"!! {line}", file=sys.stderr)
    print(bar, file=sys.stderr, flush=True)


def start_sim_subprocess(host: str = "127.0.0.1") -> tuple[subprocess.Popen[str], str]:
    """The simulated upstream in a child process on a free port; returns (process, base URL)."""
    from ethereal.lifeline import preexec

    # the sim dies with this process even when it is SIGKILLed (lifeline.py)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ethereal.sim", "--host", host, "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=preexec(),  # only a prctl system call between fork and exec
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if "listening on" in line:
            return proc, line.strip().rsplit(" ", 1)[-1]
    proc.kill()
    raise RuntimeError("the simulated upstream did not start")


async def _with_store(settings: Settings, fn: Callable[[Any], Any], *, migrate: bool = True) -> Any:
    from ethereal.storage import open_store

    store = await open_store(settings.storage_url, migrate=migrate)
    try:
        return await fn(store)
    finally:
        await store.close()


def _stored_upstreams(settings: Settings) -> int:
    """How many upstream credentials the store holds; -1 (after a clear message) when the
    secret key needed to decrypt them is missing or wrong."""
    from ethereal.secretbox import SecretKeyError
    from ethereal.upstream.service import stored_credential_count

    async def go(store: Any) -> int:
        return await stored_credential_count(store, settings)

    try:
        return asyncio.run(_with_store(settings, go))
    except SecretKeyError as exc:
        print(f"ethereal: configuration error: {exc}", file=sys.stderr)
        return -1


def _ensure_first_key(settings: Settings) -> str | None:
    """On a store with no keys at all, mint one so the quick start has a key to use."""
    from ethereal.keys import mint

    async def go(store: Any) -> str | None:
        if await store.list_keys(limit=1):
            return None
        plaintext, record = mint(settings.key_prefix, name="first key", owner="admin")
        await store.insert_keys([record])
        return plaintext

    return asyncio.run(_with_store(settings, go))


def _example_model(settings: Settings) -> str:
    """A model to name in the start-up example: the one the registry's data names for client set-ups."""
    from ethereal.models import RegistryError, load_registry

    try:
        registry = load_registry(settings.models_file)
    except RegistryError:
        return "MODEL"
    return registry.default_model.id


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings(
        args.config,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_format=args.log_format,
        log_level=args.log_level,
        metrics_port=args.metrics_port,
    )
    _check_models_file(settings)  # a bad models file stops here, named, before anything starts
    stored = _stored_upstreams(settings)
    if stored < 0:
        return 2
    sim_proc = None
    if not (settings.upstream_url and settings.upstream_key) and not stored:
        sim_proc, sim_url = start_sim_subprocess()
        settings = settings.with_overrides(upstream_url=sim_url, upstream_key="sim-upstream-key")
        _loud(
            [
                "NO UPSTREAM CREDENTIAL CONFIGURED: serving from the SIMULATED Anthropic API",
                f"at {sim_url}. Responses are generated, not Claude's.",
                "Set ETHEREAL_UPSTREAM_URL and ETHEREAL_UPSTREAM_KEY (or ANTHROPIC_API_KEY) for real use.",
            ]
        )
    first_key = _ensure_first_key(settings)
    base = f"http://{settings.host}:{settings.port}"
    if first_key:
        print("A first API key was minted (shown once, only its hash is stored):", flush=True)
        print(f"  {first_key}", flush=True)
        print("Try it:", flush=True)
        print(
            f"  curl -s {base}/v1/messages -H 'x-api-key: {first_key}' -H 'anthropic-version: 2023-06-01'"
            f' -H \'content-type: application/json\' -d \'{{"model":"{_example_model(settings)}","max_tokens":64,'
            '"messages":[{"role":"user","content":"Hello"}]}\'',
            flush=True,
        )
    metrics_dir = _metrics_dir()
    if settings.metrics_port:
        from prometheus_client import start_http_server

        from ethereal.observability.metrics import registry_for_directory

        start_http_server(
            settings.metrics_port, addr=settings.host, registry=registry_for_directory(metrics_dir)
        )
        print(
            f"metrics on http://{settings.host}:{settings.metrics_port}/metrics (no credentials)", flush=True
        )
    print(f"ethereal listening on {base} (storage: {settings.storage_url.split('@')[-1]})", flush=True)
    try:
        return serve_forever(settings)
    finally:
        if os.path.basename(metrics_dir).startswith("ethereal-metrics-"):
            shutil.rmtree(metrics_dir, ignore_errors=True)
        if sim_proc is not None:
            sim_proc.terminate()
            sim_proc.wait(timeout=10)


def _metrics_dir() -> str:
    """Where every worker writes its metric samples and live ring (prometheus multiprocess mode).

    A fresh directory per ``serve`` unless ``PROMETHEUS_MULTIPROC_DIR`` names one: counts from
    an earlier run must not add up with this one's. Spawned workers inherit the variable.
    """
    existing = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if existing:
        os.makedirs(existing, exist_ok=True)
        return existing
    path = tempfile.mkdtemp(prefix="ethereal-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def serve_forever(settings: Settings) -> int:
    """uvicorn (httptools + uvloop: measured fastest for this app, see docs/benchmarks.md), one worker per
    ``--workers``. Workers receive the validated settings object itself (pickled into each
    spawned process with the app), never through the environment. SIGTERM drains, lets requests
    in flight finish within a grace period, flushes and exits 0 (``ethereal/serving.py``)."""
    from ethereal.serving import serve

    return serve(settings)


def cmd_sim(args: argparse.Namespace, rest: list[str]) -> int:
    from ethereal.sim import main as sim_main

    return sim_main(rest)


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)

    async def go(store: Any) -> list[str]:
        return await store.migrate()

    applied = asyncio.run(_with_store(settings, go, migrate=False))
    where = settings.storage_url.split("@")[-1]
    print(f"{len(applied)} migration(s) applied to {where}" if applied else f"{where} is up to date")
    if settings.secret_key:  # credentials stored before the KDF: re-encrypt them
        from ethereal.secretbox import SecretBox, SecretKeyError
        from ethereal.upstream.service import rewrap_credentials

        async def rewrap(store: Any) -> int:
            return await rewrap_credentials(store, SecretBox(settings.secret_key))

        try:
            count = asyncio.run(_with_store(settings, rewrap, migrate=False))
        except SecretKeyError as exc:
            print(f"ethereal: configuration error: {exc}", file=sys.stderr)
            return 2
        if count:
            print(f"{count} upstream credential(s) re-encrypted with the scrypt-derived key")
    return 0


_CLEAR = "__clear__"  # `--rpm none` on update: remove the limit


def _or_clear(convert: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """An argparse type: ``convert``'s value, or _CLEAR for none/null."""

    def parse(raw: str) -> Any:
        if raw.strip().lower() in ("none", "null"):
            return _CLEAR
        try:
            return convert(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} or 'none', got {raw!r}") from None

    return parse


_int_or_clear = _or_clear(int, "an integer")
_float_or_clear = _or_clear(float, "a number")


def _key_attrs(args: argparse.Namespace) -> dict[str, Any]:
    """The key attributes given on the command line, as the admin API's JSON fields."""
    attrs: dict[str, Any] = {}
    for name in (
        "name",
        "owner",
        "plan",
        "budget_tokens",
        "budget_micro_usd",
        "budget_usd",
        "rpm",
        "tpm",
        "max_concurrency",
        "expires_in_days",
        "expires_at",
    ):
        value = getattr(args, name, None)
        if value is not None:
            cleared = value == _CLEAR or (
                name in ("plan", "expires_at") and value.lower() in ("none", "never")
            )
            attrs[name] = None if cleared else value
    models = getattr(args, "models", None)
    if models:
        attrs["allowed_models"] = (
            None
            if models.strip().lower() in ("none", "all")
            else [m.strip() for m in models.split(",") if m.strip()]
        )
    metadata = getattr(args, "metadata", None)
    if metadata is not None:
        try:
            attrs["metadata"] = json.loads(metadata)
        except ValueError:
            attrs["metadata"] = metadata  # refused by the validator with the field's name
    return attrs


def _validated(
    settings: Settings, attrs: dict[str, Any], *, allow: tuple[str, ...] | None = None
) -> dict[str, Any]:
    from ethereal.admin.keyspec import KEY_FIELDS, parse_key_fields
    from ethereal.limits.plans import Plans
    from ethereal.models import load_registry

    return parse_key_fields(
        attrs,
        registry=load_registry(settings.models_file),
        plans=Plans(settings.plans),
        allow=allow or KEY_FIELDS,
    )


def _publish_key_change(settings: Settings, key_hash: str) -> None:
    """With Redis configured, running gateways drop the key from their cache at once (else within the TTL)."""
    from ethereal.keychanges import publish_once

    publish_once(settings.redis_url, key_hash, cache_ttl=settings.key_cache_ttl)


def cmd_keys(args: argparse.Namespace) -> int:
    from ethereal.admin.keyspec import KEY_FIELDS, key_json, key_state
    from ethereal.errors import GatewayError
    from ethereal.keys import mint

    settings = load_settings(args.config)
    try:
        if args.keys_cmd == "mint":
            if not 1 <= args.count <= 500:
                print("--count must be between 1 and 500", file=sys.stderr)
                return 2
            attrs = _validated(settings, _key_attrs(args))
            minted = [mint(settings.key_prefix, **attrs) for _ in range(args.count)]

            async def go(store: Any) -> None:
                await store.insert_keys([record for _, record in minted])  # one transaction

            asyncio.run(_with_store(settings, go))
            for plaintext, record in minted:
                if args.json:
                    print(json.dumps({**key_json(record), "key": plaintext}))
                else:
                    print(f"{record.id}\t{plaintext}")
            if not args.json:
                print("(keys are shown once; only their sha256 is stored)", file=sys.stderr)
            return 0
        if args.keys_cmd == "list":
            plan = args.plan
            if plan is not None:
                from ethereal.limits.plans import Plans

                found = Plans(settings.plans).get(plan)
                plan = found.name if found else plan

            async def go_list(store: Any) -> tuple[list[Any], dict[str, Any]]:
                records = await store.list_keys(
                    owner=args.owner, plan=plan, state=args.state, limit=args.limit, after_id=args.after_id
                )
                return records, await store.spend_by_key([r.id for r in records])

            records, spend = asyncio.run(_with_store(settings, go_list))
            for record in records:
                if args.json:
                    print(json.dumps(key_json(record, spend.get(record.id))))
                    continue
                cost = (spend.get(record.id) or {}).get("cost_micro", 0) / 1e6
                print(
                    f"{record.id}\t{record.display}\t{key_state(record)}\t{record.name}\t{record.owner}\t"
                    f"{record.plan or ''}\t${cost:.6f}"
                )
            return 0
        if args.keys_cmd == "show":

            async def go_show(store: Any) -> Any:
                record = await store.get_key(args.key_id)
                return record, (await store.spend_by_key([args.key_id])).get(args.key_id)

            record, spent = asyncio.run(_with_store(settings, go_show))
            if record is None:
                print(f"no key {args.key_id}", file=sys.stderr)
                return 1
            print(json.dumps(key_json(record, spent), indent=2))
            return 0
        if args.keys_cmd in ("update", "revoke", "delete"):
            if args.keys_cmd == "update":
                attrs = _key_attrs(args)
                if args.revoked is not None:
                    attrs["revoked"] = args.revoked == "true"
                changes = _validated(settings, attrs, allow=(*KEY_FIELDS, "revoked"))
                if not changes:
                    print("nothing to update: give at least one option", file=sys.stderr)
                    return 2
            else:
                changes = {"revoked": True}

            async def go_change(store: Any) -> Any:
                record = await store.get_key(args.key_id)
                if record is None:
                    return None
                if args.keys_cmd == "delete":
                    await store.delete_key(record.id)
                    return record
                return await store.update_key(record.id, changes)

            record = asyncio.run(_with_store(settings, go_change))
            if record is None:
                print(f"no key {args.key_id}", file=sys.stderr)
                return 1
            _publish_key_change(settings, record.key_hash)
            if args.keys_cmd == "update":
                print(json.dumps(key_json(record), indent=2))
            else:
                print(f"{args.keys_cmd}d {record.id} ({record.display})")
            return 0
    except GatewayError as exc:  # a validation error, named after its field
        print(f"ethereal: {exc.message}", file=sys.stderr)
        return 2
    return 2


def _upstream_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if getattr(args, "url", None):
        spec["base_url"] = args.url
    key = None
    if getattr(args, "key", None):
        key = args.key
    elif getattr(args, "key_env", None):
        key = os.environ.get(args.key_env)
        if not key:
            raise ValueError(f"environment variable {args.key_env} is empty or unset")
    elif getattr(args, "key_stdin", False):
        key = sys.stdin.readline().strip()
    if key is not None:
        spec["api_key"] = key
    for name in ("weight", "rpm"):
        value = getattr(args, name, None)
        if value is not None:
            spec[name] = value
    if getattr(args, "models", None) is not None:
        spec["models"] = [m.strip() for m in args.models.split(",") if m.strip()] or None
    if getattr(args, "spend_cap_usd", None) is not None:
        spec["spend_cap_micro"] = round(args.spend_cap_usd * 1_000_000)
    if getattr(args, "no_rpm", False):
        spec["rpm"] = None
    if getattr(args, "no_spend_cap", False):
        spec["spend_cap_micro"] = None
    return spec


def _print_upstream(item: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(item))
        return
    health = item.get("health") or {}
    state = health.get("state") or ("enabled" if item["enabled"] else "disabled")
    models = ",".join(item["models"]) if item.get("models") else "*"
    cap = f"${item['spend_cap_micro'] / 1e6:.2f}/mo" if item.get("spend_cap_micro") is not None else "-"
    print(
        f"{item['name']}\t{state}\t{item['base_url']}\tweight={item['weight']:g}\tmodels={models}"
        f"\trpm={item.get('rpm') or '-'}\tcap={cap}\t{item.get('disabled_reason') or ''}".rstrip()
    )


def cmd_upstream(args: argparse.Namespace) -> int:
    from ethereal.errors import GatewayError
    from ethereal.models import load_registry
    from ethereal.upstream.pool import Pool
    from ethereal.upstream.service import UpstreamService

    settings = load_settings(args.config)
    sub = args.upstream_cmd
    try:
        spec = _upstream_spec(args)
    except ValueError as exc:
        print(f"ethereal: {exc}", file=sys.stderr)
        return 2
    if sub == "add" and "api_key" not in spec:
        if sys.stdin.isatty():
            import getpass

            spec["api_key"] = getpass.getpass(f"API key for {args.name}: ").strip()
        else:
            spec["api_key"] = sys.stdin.readline().strip()

    async def go(store: Any) -> int:
        svc = UpstreamService(settings, Pool(), None, load_registry(settings.models_file))
        await svc.attach(store)
        try:
            if sub == "add":
                data = {"name": args.name, **spec}
                if args.disabled:
                    data["enabled"] = False
                _print_upstream(await svc.add(data), args.json)
            elif sub == "list":
                for item in await svc.list():
                    _print_upstream(item, args.json)
            elif sub == "update":
                if not spec:
                    print("nothing to update: pass at least one option", file=sys.stderr)
                    return 2
                _print_upstream(await svc.update(args.name, spec), args.json)
            elif sub in ("disable", "enable"):
                reason = getattr(args, "reason", None)
                _print_upstream(await svc.set_enabled(args.name, sub == "enable", reason), args.json)
            elif sub == "delete":
                await svc.delete(args.name)
                print(f"deleted {args.name}")
            return 0
        except GatewayError as exc:
            print(f"ethereal: {exc.message}", file=sys.stderr)
            return 1
        finally:
            await svc.pool.health.close()

    return asyncio.run(_with_store(settings, go))


def _check_models_file(settings: Settings) -> Any:
    """The registry (shipped data + ETHEREAL_MODELS_FILE), validated before anything starts; a bad
    file raises SettingsError naming the file and the field."""
    from ethereal.models import RegistryError, load_registry

    try:
        registry = load_registry(settings.models_file)
    except RegistryError as exc:
        raise SettingsError(f"ETHEREAL_MODELS_FILE: {exc}") from None
    return registry


def _cmd_reprice(args: argparse.Namespace, settings: Settings, registry: Any) -> int:
    from ethereal.limits import build_limiter
    from ethereal.metering.reprice import RepriceError, parse_bound, reprice

    try:
        since = parse_bound(args.since, field_name="--since")
        until = parse_bound(args.until, field_name="--until", end=True) if args.until else time.time()
    except RepriceError as exc:
        print(f"ethereal: {exc}", file=sys.stderr)
        return 2

    async def go(store: Any) -> Any:
        # the budget counters: the Redis every gateway shares; without Redis, each gateway's counters
        # live in its own process (reprice through the admin API, or restart: they are seeded again)
        limiter = build_limiter(settings, store)
        await limiter.start()
        try:
            return await reprice(store, registry, limiter, since=since, until=until, dry_run=args.dry_run)
        finally:
            await limiter.close()

    try:
        result = asyncio.run(_with_store(settings, go))
    except RepriceError as exc:
        print(f"ethereal: {exc}", file=sys.stderr)
        return 2
    out = result.to_json()
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    verb = "would change" if args.dry_run else "changed"
    print(
        f"{out['since']} .. {out['until']}: {out['records']['examined']} record(s) examined, {verb} "
        f"{out['records']['changed']} ({out['records']['relabelled']} relabelled, {out['records']['skipped']} "
        f"priced across several cards left as they are), registry {out['registry_version']}"
    )
    print(f"cost of the changed records: ${out['before_micro'] / 1e6:.6f} -> ${out['after_micro'] / 1e6:.6f}")
    for key in out["keys"]:
        print(
            f"  {key['key_id']}	{key['records']} record(s)	${key['before_micro'] / 1e6:.6f} -> "
            f"${key['after_micro'] / 1e6:.6f}"
        )
    if not settings.redis_url and not args.dry_run and out["keys"]:
        print(
            "(no Redis configured: running gateways keep their own budget counters until they restart; "
            "POST /admin/api/models/reprice moves the serving gateway's)",
            file=sys.stderr,
        )
    return 0


async def _read_upstream_lists(settings: Settings, store: Any, registry: Any) -> dict[str, dict[str, Any]]:
    """Every enabled credential's ``GET /v1/models`` now (the registry learns the ids)."""
    from ethereal.upstream.client import UpstreamClient
    from ethereal.upstream.pool import Pool
    from ethereal.upstream.service import UpstreamService

    svc = UpstreamService(settings, Pool(), UpstreamClient(), registry)
    svc.store = store
    try:
        await svc.reload()
        for cred in svc.pool.credentials:
            if cred.enabled:
                await svc.discover(cred)
        return {
            c.name: svc.models_listed(c.name) or {"ids": [], "error": "disabled"}
            for c in svc.pool.credentials
        }
    finally:
        assert svc.client is not None
        await svc.client.close()


def cmd_models(args: argparse.Namespace) -> int:
    """``ethereal models list|check``: the registry as it stands, and against upstreams and peers."""
    from ethereal.models import RegistryError, load_registry
    from ethereal.models import check as mc

    settings = load_settings(args.config)
    try:
        registry = load_registry(settings.models_file)
    except RegistryError as exc:
        print(f"ethereal: {exc}", file=sys.stderr)
        return 2
    if args.models_cmd == "reprice":
        return _cmd_reprice(args, settings, registry)
    lists: dict[str, dict[str, Any]] = {}
    if (args.models_cmd == "check" and not args.no_upstreams) or (
        args.models_cmd == "list" and args.upstreams
    ):
        lists = asyncio.run(
            _with_store(settings, lambda store: _read_upstream_lists(settings, store, registry))
        )

    if args.models_cmd == "list":
        models = registry.models if args.all else registry.listed()
        rows = mc.list_rows(models)
        if args.json:
            print(
                json.dumps(
                    {"registry": registry.source, "version": registry.version, "models": rows}, indent=2
                )
            )
        else:
            print(mc.format_rows(rows))
            provisional = [r["id"] for r in rows if r["provisional"]]
            if provisional:
                print(
                    f"{len(provisional)} model(s) served by an upstream and not described (billed provisionally): "
                    + ", ".join(provisional)
                )
        return 0

    report: dict[str, Any] = {
        "registry": registry.source,
        "version": registry.version,
        "upstreams": {},
        "peers": {},
    }
    disagreements = 0
    expired = registry.expired()
    if expired:
        print(
            f"WARNING: no rate card in force for {', '.join(m.id for m in expired)} (their last card has "
            "expired): add a card (docs/models.md)",
            file=sys.stderr,
        )
        report["expired"] = [m.id for m in expired]
    for name, seen in sorted(lists.items()):
        if seen.get("error"):
            report["upstreams"][name] = {"error": seen["error"]}
            print(f"upstream {name}: GET /v1/models could not be read: {seen['error']}")
            continue
        undescribed, not_served = mc.compare_upstream(registry, list(seen.get("ids") or []))
        report["upstreams"][name] = {
            "count": len(seen.get("ids") or []),
            "served_not_described": undescribed,
            "described_not_served": not_served,
        }
        print(f"upstream {name}: lists {len(seen.get('ids') or [])} model(s)")
        for mid in undescribed:
            print(
                f"  served, not described (billed provisionally; describe it in ETHEREAL_MODELS_FILE): {mid}"
            )
        for mid in not_served:
            print(f"  described, not in its list (lists can be partial; still routed): {mid}")
    if not lists and not args.no_upstreams:
        print("no upstream credential to read (ETHEREAL_UPSTREAM_URL/KEY or `ethereal upstream add`)")
    for path in args.against or []:
        try:
            source, entries = mc.read_peer(Path(path))
        except mc.PeerFileError as exc:
            print(f"ethereal: {exc}", file=sys.stderr)
            return 2
        found, unknown = mc.compare_peer(registry, entries)
        disagreements += len(found)
        report["peers"][path] = {
            "format": source,
            "entries": len(entries),
            "unknown": unknown,
            "disagreements": [
                {
                    "model": d.model,
                    "peer_name": d.peer_name,
                    "field": d.field,
                    "registry": d.registry,
                    "peer": d.peer,
                }
                for d in found
            ],
        }
        print(
            f"{source} {path}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, "
            f"{len(found)} disagreement(s)"
        )
        for d in found:
            print("  " + d.describe(source))
        for name in unknown:
            print(f"  not in the registry: {name}")
    if args.json:
        print(json.dumps(report, indent=2))
    return 1 if (args.strict and disagreements) or expired else 0


def cmd_connect(args: argparse.Namespace) -> int:
    """Print how TOOL reaches this gateway (the console's key page shows the same snippets)."""
    from ethereal import connect

    if args.tool in (None, "list"):
        width = max(len(s.id) for s in connect.SETUPS)
        for s in connect.SETUPS:
            print(f"{s.id:<{width}}  {s.name}: {s.route}{'' if s.tested else ' (untested)'}")
        return 0
    try:
        setup = connect.get(args.tool)
    except KeyError as exc:
        print(f"ethereal: {exc.args[0]}", file=sys.stderr)
        return 2
    base = args.base_url
    if not base:
        settings = load_settings(args.config)
        base = connect.default_base_url(settings.public_url, settings.host, settings.port, settings.base_path)
    key = args.key if args.key else connect.KEY
    if args.json:
        print(json.dumps(setup.as_json(key, base, args.model), indent=2))
    else:
        sys.stdout.write(setup.render(key, base, args.model))
    return 0


def _upstream_options(p: argparse.ArgumentParser, *, adding: bool) -> None:
    p.add_argument("--url", required=adding, help="base URL of the Anthropic-compatible API")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--key", help="the API key (visible in the process list: prefer --key-env/--key-stdin)")
    key.add_argument("--key-env", dest="key_env", metavar="VAR", help="read the API key from this variable")
    key.add_argument("--key-stdin", dest="key_stdin", action="store_true", help="read the API key from stdin")
    p.add_argument("--weight", type=float)
    p.add_argument("--models", help="comma-separated model ids served (default: all; 'prefix*' patterns ok)")
    p.add_argument("--rpm", type=int, help="requests per minute cap")
    p.add_argument("--spend-cap-usd", dest="spend_cap_usd", type=float, help="spend cap per calendar month")
    if not adding:
        p.add_argument("--no-rpm", dest="no_rpm", action="store_true", help="remove the RPM cap")
        p.add_argument(
            "--no-spend-cap", dest="no_spend_cap", action="store_true", help="remove the spend cap"
        )
    p.add_argument("--json", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ethereal", description="A self-hosted API gateway for Claude")
    parser.add_argument("--config", help="TOML settings file (environment variables still win)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.add_argument(
        "--log-format",
        dest="log_format",
        choices=("text", "json"),
        help="text (default) or json: one JSON object per line, one line per request",
    )
    serve.add_argument(
        "--log-level", dest="log_level", choices=("debug", "info", "warning", "error", "critical")
    )
    serve.add_argument(
        "--metrics-port",
        dest="metrics_port",
        type=int,
        help="also serve /metrics without credentials on this port (keep it private)",
    )

    sub.add_parser("sim", help="run the simulated Anthropic API (see `ethereal sim --help`)", add_help=False)
    sub.add_parser("migrate", help="apply database migrations")

    from ethereal.connect import BY_ID, DEFAULT_MODEL

    conn = sub.add_parser(
        "connect",
        help="print the set-up of a coding tool or SDK for this gateway (`ethereal connect` lists them)",
    )
    conn.add_argument(
        "tool", nargs="?", choices=(*BY_ID, "list"), metavar="TOOL", help=f"one of: {', '.join(BY_ID)}"
    )
    conn.add_argument("--key", help="the API key to put in (default: the placeholder <key>)")
    conn.add_argument(
        "--base-url",
        dest="base_url",
        help="the gateway's URL as clients reach it (default: ETHEREAL_PUBLIC_URL, else host:port)",
    )
    conn.add_argument("--model", default=DEFAULT_MODEL, help=f"the model to name (default: {DEFAULT_MODEL})")
    conn.add_argument("--json", action="store_true")

    keys = sub.add_parser("keys", help="mint, list, show, update, revoke and delete API keys")
    keys_sub = keys.add_subparsers(dest="keys_cmd", required=True)

    def key_options(p: argparse.ArgumentParser, updating: bool) -> None:
        clear = " ('none' removes it)" if updating else ""
        p.add_argument("--name", default=None)
        p.add_argument("--owner", default=None, help="person or team label")
        p.add_argument("--plan", default=None, help=f"pro, max5x, max20x or a configured plan{clear}")
        p.add_argument(
            "--budget-tokens", dest="budget_tokens", type=_int_or_clear, help=f"token budget{clear}"
        )
        p.add_argument(
            "--budget-micro-usd",
            dest="budget_micro_usd",
            type=_int_or_clear,
            help=f"spending budget in micro-USD{clear}",
        )
        p.add_argument(
            "--budget-usd", dest="budget_usd", type=_float_or_clear, help=f"spending budget in USD{clear}"
        )
        p.add_argument("--rpm", type=_int_or_clear, help=f"requests per minute{clear}")
        p.add_argument("--tpm", type=_int_or_clear, help=f"tokens per minute{clear}")
        p.add_argument(
            "--max-concurrency",
            dest="max_concurrency",
            type=_int_or_clear,
            help=f"requests in flight at once{clear}",
        )
        p.add_argument(
            "--models",
            help="comma-separated model ids or families the key may use"
            + (" ('all' removes the restriction)" if updating else ""),
        )
        p.add_argument("--expires-in-days", dest="expires_in_days", type=float)
        p.add_argument(
            "--expires-at", dest="expires_at", help="RFC 3339 time" + (" ('none': never)" if updating else "")
        )
        p.add_argument("--metadata", help="a JSON object")

    mint_p = keys_sub.add_parser("mint", help="mint keys (printed once)")
    mint_p.add_argument("--count", type=int, default=1, help="1 to 500 keys, in one transaction")
    key_options(mint_p, updating=False)
    mint_p.add_argument("--json", action="store_true")
    list_p = keys_sub.add_parser("list", help="list keys with their spend")
    list_p.add_argument("--owner")
    list_p.add_argument("--plan")
    list_p.add_argument("--state", choices=("active", "revoked", "expired"))
    list_p.add_argument("--limit", type=int, default=100)
    list_p.add_argument("--after-id", dest="after_id", help="page after this key id")
    list_p.add_argument("--json", action="store_true")
    show_p = keys_sub.add_parser("show", help="one key and its spend, as JSON")
    show_p.add_argument("key_id")
    update_p = keys_sub.add_parser("update", help="change a key's limits, plan, expiry, models, metadata")
    update_p.add_argument("key_id")
    key_options(update_p, updating=True)
    update_p.add_argument("--revoked", choices=("true", "false"), help="revoke or reinstate")
    revoke_p = keys_sub.add_parser("revoke", help="revoke a key by id")
    revoke_p.add_argument("key_id")
    delete_p = keys_sub.add_parser("delete", help="delete a key by id")
    delete_p.add_argument("key_id")

    up = sub.add_parser(
        "upstream", help="manage upstream credentials (stored encrypted with ETHEREAL_SECRET_KEY)"
    )
    up_sub = up.add_subparsers(dest="upstream_cmd", required=True)
    add_p = up_sub.add_parser("add", help="add a credential (key from --key-env, --key-stdin, or a prompt)")
    add_p.add_argument("name")
    _upstream_options(add_p, adding=True)
    add_p.add_argument("--disabled", action="store_true", help="add it disabled")
    ls_p = up_sub.add_parser("list", help="list credentials")
    ls_p.add_argument("--json", action="store_true")
    upd_p = up_sub.add_parser("update", help="change a credential")
    upd_p.add_argument("name")
    _upstream_options(upd_p, adding=False)
    dis_p = up_sub.add_parser("disable", help="stop routing to a credential")
    dis_p.add_argument("name")
    dis_p.add_argument("--reason")
    dis_p.add_argument("--json", action="store_true")
    en_p = up_sub.add_parser("enable", help="route to a credential again (clears cooldowns and 401 disables)")
    en_p.add_argument("name")
    en_p.add_argument("--json", action="store_true")
    del_p = up_sub.add_parser("delete", help="delete a credential")
    del_p.add_argument("name")

    models = sub.add_parser(
        "models",
        help="the model registry: list it, check it against upstreams and price maps, re-price usage",
    )
    models_sub = models.add_subparsers(dest="models_cmd", required=True)
    mlist = models_sub.add_parser("list", help="models with status, limits and the prices in force now")
    mlist.add_argument("--all", action="store_true", help="retired models too")
    mlist.add_argument(
        "--upstreams",
        action="store_true",
        help="read each credential's GET /v1/models first (shows the provisional ones)",
    )
    mlist.add_argument("--json", action="store_true")
    mcheck = models_sub.add_parser(
        "check",
        help="the registry against each credential's GET /v1/models and "
        "against LiteLLM or Portkey price files",
    )
    mcheck.add_argument(
        "--against",
        action="append",
        metavar="PATH",
        help="a LiteLLM model_prices_and_context_window.json or a Portkey pricing/anthropic.json "
        "(repeatable)",
    )
    mcheck.add_argument(
        "--no-upstreams",
        dest="no_upstreams",
        action="store_true",
        help="do not read the credentials' model lists",
    )
    mcheck.add_argument("--strict", action="store_true", help="exit 1 when a price file disagrees")
    mcheck.add_argument("--json", action="store_true")
    rep = models_sub.add_parser(
        "reprice",
        help="re-price stored usage with the models file's cards (after a "
        "correction): records, usage sums and budget counters",
    )
    rep.add_argument("--since", required=True, help="first day (YYYY-MM-DD, UTC) or an RFC 3339 time")
    rep.add_argument(
        "--until", help="last day, included (YYYY-MM-DD), or an RFC 3339 time (excluded); default: now"
    )
    rep.add_argument(
        "--dry-run", dest="dry_run", action="store_true", help="show what would change, change nothing"
    )
    rep.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `ethereal sim ...` hands its own flags to the simulator's parser
    if "sim" in argv:
        idx = argv.index("sim")
        args = parser.parse_args(argv[: idx + 1])
        return cmd_sim(args, argv[idx + 1 :])
    args = parser.parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "serve": cmd_serve,
        "migrate": cmd_migrate,
        "keys": cmd_keys,
        "upstream": cmd_upstream,
        "models": cmd_models,
        "connect": cmd_connect,
    }
    command = commands.get(args.command)
    if command is None:
        parser.print_help()
        return 2
    try:
        return command(args)
    except SettingsError as exc:
        print(f"ethereal: configuration error: {exc}", file=sys.stderr)
        return 2
