# syntax=docker/dockerfile:1
# Multi-stage: build the wheel (Rust extension via maturin), then a slim runtime as a non-root user.
# CI mirrors these install steps in .ci/run + `make setup` (pip install of the same package).

FROM python:3.11-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends curl build-essential ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
ENV PATH=/root/.cargo/bin:$PATH
RUN pip install --no-cache-dir "maturin>=1.7,<2"
WORKDIR /src
COPY Cargo.toml Cargo.lock pyproject.toml README.md ./
COPY rust ./rust
COPY python ./python
RUN maturin build --release --out /wheels

FROM python:3.11-slim-bookworm AS runtime
RUN useradd --create-home --uid 10001 ethereal
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER ethereal
WORKDIR /home/ethereal
ENV ETHEREAL_DATA_DIR=/home/ethereal/data \
    ETHEREAL_HOST=0.0.0.0 \
    ETHEREAL_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz'); sys.exit(0)"
ENTRYPOINT ["ethereal"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
