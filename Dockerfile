# syntax=docker/dockerfile:1
# Conveyor: the worker, the producer CLI and the DLQ tools in one small image.
#
#   docker build -t conveyor .                      # every extra (brokers, stores, tracing)
#   docker run --rm conveyor worker myapp.jobs:jobs --broker amqp://…
#
# Your handlers: build FROM this image and COPY your package in (it is on the image's Python
# path through `pip install`), or mount it and set PYTHONPATH.
#
# Two stages: the build stage creates a virtualenv and installs the wheel-only dependencies;
# the final stage copies that virtualenv onto the same slim base, so no compiler, pip cache or
# source tree ends up in the image. The base is pinned to an exact release tag (bump it
# deliberately; pin the digest too where your registry policy asks for it).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/conveyor
WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY conveyor ./conveyor
COPY common ./common
COPY schemas ./schemas
COPY producer ./producer
COPY consumer ./consumer
ARG EXTRAS=all
RUN /opt/conveyor/bin/pip install --no-compile -c constraints.txt ".[${EXTRAS}]" \
    && /opt/conveyor/bin/pip uninstall -y pip \
    && /opt/conveyor/bin/python -m compileall -q -j 0 /opt/conveyor/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="conveyor" \
      org.opencontainers.image.description="Reliable, schema-versioned background jobs on RabbitMQ, Pulsar or in memory" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 conveyor \
    && useradd --system --uid 10001 --gid conveyor --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin conveyor
COPY --from=build /opt/conveyor /opt/conveyor
# CONVEYOR_STATE_DIR: the crash journal must outlive a crashed container; on Kubernetes /tmp is
# the pod's emptyDir, which survives container restarts (deploy/kubernetes/deployment.yaml).
# CONVEYOR_HTTP_HOST: in a container the health/metrics port must be reachable from outside the
# container's loopback (probes, Prometheus); publish the port only where it should be seen.
ENV PATH=/opt/conveyor/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CONVEYOR_HTTP_HOST=0.0.0.0 \
    CONVEYOR_HTTP_PORT=9464 \
    CONVEYOR_LOG_FORMAT=json \
    CONVEYOR_LOG_LEVEL=INFO \
    CONVEYOR_STATE_DIR=/tmp/conveyor-state
WORKDIR /tmp
USER 10001:10001
EXPOSE 9464
# Liveness for plain Docker/Compose (Kubernetes uses its own probes on /healthz and /readyz).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CONVEYOR_HTTP_PORT', '9464'), timeout=2)"]
ENTRYPOINT ["conveyor"]
CMD ["--help"]
