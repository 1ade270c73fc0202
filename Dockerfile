# syntax=docker/dockerfile:1
# dra-bridge admission webhook image: `docker build -t dra-bridge:0.1.0 .`
#
# Base image pinned by version tag AND digest, so a rebuild gets the same bytes. The digest below
# is the one public Dockerfiles pin for this tag; it could not be checked from the build machine
# (no registry access). Check it, or move to a newer patch release, with
#   docker buildx imagetools inspect python:3.11.11-slim-bookworm --format '{{json .Manifest.Digest}}'
# (the multi-arch index digest) and put it after the "@" below. A wrong digest fails the pull.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:081075da77b2b55c23c088251026fb69a7b2bf92471e491ff5fd75c192fd38e5

# ---------------------------------------------------------------- builder: wheel -> venv
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python -m venv /opt/venv
# Only what the wheel is built from (see .dockerignore): no tests, no certificates, no venv.
COPY pyproject.toml README.md ./
COPY webhook/ ./webhook/
# Build the wheel, then install it with its runtime dependencies only (no `.[test]` extras).
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install /wheels/dra_bridge-*.whl

# ---------------------------------------------------------------- runtime: the venv, nothing else
FROM ${PYTHON_IMAGE} AS runtime
# The Deployment runs as this UID/GID too (deploy/base/deployment.yaml, runAsUser).
ARG APP_UID=65532
LABEL org.opencontainers.image.title="dra-bridge" \
      org.opencontainers.image.description="Admission webhook: legacy GPU requests to Kubernetes DRA, tenant GPU quota" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    DRA_BRIDGE_POLICIES_DIR=/app/policies
RUN groupadd --system --gid "${APP_UID}" dra-bridge \
 && useradd --system --uid "${APP_UID}" --gid "${APP_UID}" --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin dra-bridge
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# The default translation catalogue, versioned with the code that reads it.
COPY policies/ /app/policies/
# Numeric, so the kubelet can verify runAsNonRoot without reading /etc/passwd.
USER ${APP_UID}:${APP_UID}
EXPOSE 8443
# Exec form: no shell at runtime; SIGTERM reaches uvicorn directly for its graceful drain.
ENTRYPOINT ["dra-bridge", "serve"]
