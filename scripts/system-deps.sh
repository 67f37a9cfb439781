#!/usr/bin/env bash
# The system packages `make test` needs (Debian names), installed when missing (`make system-deps`,
# which `make test` runs first):
#   redis-server, redis-tools  throwaway Redis instances and clusters (tests/services.py)
#   postgresql                 throwaway PostgreSQL clusters (initdb, tests/services.py)
#   haproxy                    the load balancer of scripts/cluster.sh (test_replica_failure.py)
#   chromium, chromium-driver  the console's browser tests (tests/console/)
#   nodejs, npm                the real CLIs and SDKs the tests drive (`make clients`)
#   curl, python3-venv         `make wheel-smoke` (the Dockerfile's steps), `make setup`'s venvs
# Idempotent and fast: each is looked for by the command it provides; `apt-get update` runs only
# when something is missing. As root with apt-get it installs; otherwise (or with
# SYSTEM_DEPS_DRY_RUN=1) it prints the exact command to run, and fails when something is missing.
set -euo pipefail

missing=()
has() { command -v "$1" >/dev/null 2>&1; }
need() {  # need <package> <test...>: the package when the test fails
  local pkg=$1
  shift
  "$@" || missing+=("$pkg")
}
postgres() { has initdb || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }
venv() { python3 -c 'import ensurepip, venv' >/dev/null 2>&1; }

need redis-server has redis-server
need redis-tools has redis-cli
need postgresql postgres
need haproxy has haproxy
need chromium has chromium
need chromium-driver has chromedriver
need nodejs has node
need npm has npm
need curl has curl
need python3-venv venv

if [ ${#missing[@]} -eq 0 ]; then
  echo "system-deps: all present (redis, postgresql, haproxy, chromium and its driver, node and npm, curl, venv)"
  exit 0
fi

install=(apt-get install -y -qq "${missing[@]}")
run="apt-get update -qq && DEBIAN_FRONTEND=noninteractive ${install[*]}"
echo "system-deps: missing ${missing[*]}"
if [ "${SYSTEM_DEPS_DRY_RUN:-}" = 1 ]; then
  echo "system-deps: would run: $run"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! has apt-get; then
  echo "system-deps: cannot install them here (needs root and apt-get); as root on Debian: $run" >&2
  exit 1
fi
echo "system-deps: $run"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${install[@]}"
# what was installed provides what was looked for
for cmd in redis-server redis-cli haproxy chromium chromedriver node npm curl; do
  has "$cmd" || { echo "system-deps: $cmd still missing after the install" >&2; exit 1; }
done
postgres || { echo "system-deps: initdb still missing after installing postgresql" >&2; exit 1; }
venv || { echo "system-deps: python3 still cannot create a venv (ensurepip) after installing python3-venv" >&2; exit 1; }
echo "system-deps: installed ${missing[*]}"
