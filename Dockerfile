# gob-metrics image, for charts/gob-metrics (docs/kubernetes.md):
#
#   docker build -t gob-metrics:0.1.0 .
#
# Needs BuildKit (the default builder since Docker 23; podman and buildah too) for the
# RUN --mount of the runtime stage. No image is published: build and push your own.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Builder: compiles the two C extensions (the remote_write wire scanner and the value
# encoder) into a wheel of gob-metrics, and collects wheels of every dependency.
FROM ${PYTHON_IMAGE} AS builder
# The compiler is only used here and not shipped: Debian's current bookworm gcc is fine.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY gob_metrics ./gob_metrics
COPY compliance ./compliance
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels .

# Runtime: the wheels only (no compiler, no source tree), run as a non-root user.
FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# --no-index: exactly the wheels the builder made (so versions are those of that build).
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --disable-pip-version-check --no-index --find-links /wheels \
        gob-metrics \
    && groupadd --system --gid 10001 gob \
    && useradd --system --uid 10001 --gid gob --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin gob \
    && mkdir /data \
    && chown gob:gob /data
# The embedded engine's data directory (one process owns it: see docs/operations.md).
VOLUME ["/data"]
USER 10001:10001
EXPOSE 9201
ENTRYPOINT ["gob-metrics"]
CMD ["serve", "--listen", "0.0.0.0:9201", "--data-dir", "/data"]
