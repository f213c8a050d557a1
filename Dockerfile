# syntax=docker/dockerfile:1
# image-ancestry: the operator (and the offline CLI), as a small non-root image.
#   docker build -t image-ancestry:0.1.0 .
# The build stage installs the package into a virtualenv; every dependency ships wheels,
# so no compiler is needed, and the final stage gets only the virtualenv: no pip cache, no
# build tools, no source tree.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/image-ancestry
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/image-ancestry/bin/pip install --no-compile . \
 && /opt/image-ancestry/bin/pip uninstall --yes pip setuptools wheel \
 && /opt/image-ancestry/bin/image-ancestry --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="image-ancestry" \
      org.opencontainers.image.description="Every container image's ancestors, parent and base image, in Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric UID/GID, so that runAsNonRoot can be verified (deploy/manager/deployment.yaml
# runs as the same 10001).
RUN groupadd --system --gid 10001 image-ancestry \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin image-ancestry
COPY --from=build /opt/image-ancestry /opt/image-ancestry
ENV PATH=/opt/image-ancestry/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# The webhook (9443) and kopf's health endpoint (--liveness, 8080 in deploy/).
EXPOSE 9443 8080
ENTRYPOINT ["image-ancestry", "run"]
