# syntax=docker/dockerfile:1
# Multi-stage: build the wheel (Rust extension via maturin) on the official Rust toolchain image,
# then a slim Python runtime running as a non-root user. `make wheel-smoke` (scripts/wheel-smoke.sh)
# mirrors these steps without a Docker engine: maturin build --release, pip install of the wheel into
# a fresh environment, `ethereal serve`, one request.

FROM rust:1-slim-bookworm AS build
# Debian bookworm's python3 is 3.11, the runtime's version: the abi3 wheel targets 3.11+
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/maturin && /opt/maturin/bin/pip install --no-cache-dir "maturin>=1.7,<2"
WORKDIR /src
COPY Cargo.toml Cargo.lock pyproject.toml README.md ./
COPY rust ./rust
COPY python ./python
RUN /opt/maturin/bin/maturin build --release --out /wheels

FROM python:3.11-slim-bookworm AS runtime
RUN useradd --create-home --uid 10001 ethereal
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
WORKDIR /home/ethereal
ENV ETHEREAL_DATA_DIR=/home/ethereal/data \
    ETHEREAL_HOST=0.0.0.0 \
    ETHEREAL_PORT=8080
EXPOSE 8080
# /healthz answers 503 while the gateway drains (SIGTERM): the container is then "unhealthy" on purpose
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz'); sys.exit(0)"
# SIGTERM: drain (healthz 503), grace period for requests in flight, flush, exit 0 (docs/deploy.md)
STOPSIGNAL SIGTERM
ENTRYPOINT ["ethereal"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
