# syntax=docker/dockerfile:1.7
# One image for the pqmpc operator and the pqmpc node (and the `pqmpc` data-owner CLI).
#
#   docker build -t pqmpc:0.1.0 .                                   # CPU (numpy)
#   docker build -t pqmpc:0.1.0-gpu --build-arg VARIANT=gpu .       # CUDA runtime + cupy
#   docker build -t pqmpc:0.1.0-oqs --build-arg WITH_OQS=true .     # + liboqs backend
#
# Entry points (pyproject [project.scripts]; the chart and the operator spell them out):
#   operator: python -m pqmpc_operator   (= pqmpc-operator, the default CMD)
#   node:     python -m pqmpc_node       (= pqmpc-node; the operator's node pods run this)
#   CLI:      pqmpc
# No ENTRYPOINT, so a pod's `command` replaces the CMD cleanly.

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.9.1-runtime-ubuntu24.04
ARG WITH_OQS=false
# liboqs release matching liboqs-python's minor version (pyproject: liboqs-python>=0.16).
ARG LIBOQS_VERSION=0.16.0
# sha256 of the release tarball; set it (the build verifies it) when you pin a new release.
ARG LIBOQS_SHA256=""

# ---------------------------------------------------------------------------------------
# Interpreter bases. The venv is built on the same base it runs on, so its interpreter
# path is valid in the runtime stage.
FROM ${PYTHON_IMAGE} AS base-cpu
ENV PQMPC_PYTHON=/usr/local/bin/python3

FROM ${CUDA_IMAGE} AS base-gpu
# Ubuntu 24.04's Python 3.12 (pqmpc needs >= 3.11); cupy-cuda12x brings its own CUDA
# libraries on top of the runtime image's driver-facing ones.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV PQMPC_PYTHON=/usr/bin/python3

FROM base-${VARIANT} AS base

# ---------------------------------------------------------------------------------------
# liboqs, built only with the algorithms pqmpc uses (ML-KEM-768/1024, ML-DSA-44/65/87).
FROM ${PYTHON_IMAGE} AS liboqs-true
ARG LIBOQS_VERSION
ARG LIBOQS_SHA256
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake ninja-build curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /build
RUN curl -fsSL -o liboqs.tar.gz "https://github.com/open-quantum-safe/liboqs/archive/refs/tags/${LIBOQS_VERSION}.tar.gz" \
 && if [ -n "${LIBOQS_SHA256}" ]; then echo "${LIBOQS_SHA256}  liboqs.tar.gz" | sha256sum -c -; fi \
 && tar xzf liboqs.tar.gz --strip-components=1 \
 && cmake -S . -B out -G Ninja \
      -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_INSTALL_PREFIX=/opt/liboqs \
      -DBUILD_SHARED_LIBS=ON \
      -DOQS_BUILD_ONLY_LIB=ON \
      -DOQS_DIST_BUILD=ON \
      -DOQS_USE_OPENSSL=OFF \
      -DOQS_MINIMAL_BUILD="KEM_ml_kem_768;KEM_ml_kem_1024;SIG_ml_dsa_44;SIG_ml_dsa_65;SIG_ml_dsa_87" \
 && cmake --build out \
 && cmake --install out \
 && rm -rf /opt/liboqs/include

FROM ${PYTHON_IMAGE} AS liboqs-false
RUN mkdir -p /opt/liboqs/lib

FROM liboqs-${WITH_OQS} AS liboqs

# ---------------------------------------------------------------------------------------
# Python install: the same command `make venv` and CI use, pinned by constraints.txt.
FROM base AS build
ARG VARIANT
ARG WITH_OQS
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 VENV=/opt/pqmpc
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY crds/ crds/
COPY operator/ operator/
COPY node/ node/
# tests/image/test_image_install.py runs this very step (VENV, VARIANT, WITH_OQS set) in a clean venv.
RUN extras=""; \
    if [ "${VARIANT}" = "gpu" ]; then extras="gpu"; fi; \
    if [ "${WITH_OQS}" = "true" ]; then extras="${extras:+${extras},}oqs"; fi; \
    "${PQMPC_PYTHON}" -m venv "${VENV}" \
 && "${VENV}/bin/pip" install --quiet -c constraints.txt ".${extras:+[${extras}]}" \
 && "${VENV}/bin/pqmpc-operator" --help >/dev/null

# ---------------------------------------------------------------------------------------
FROM base AS runtime
ARG VARIANT
ARG WITH_OQS
LABEL org.opencontainers.image.title="pqmpc" \
      org.opencontainers.image.description="Post-quantum secure multi-party computation: operator and node" \
      org.opencontainers.image.source="https://github.com/pqmpc/pqmpc" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.pqmpc.variant="${VARIANT}" \
      io.pqmpc.liboqs="${WITH_OQS}"
COPY --from=build /opt/pqmpc /opt/pqmpc
COPY --from=liboqs /opt/liboqs/lib/ /opt/liboqs/lib/
# A numeric non-root user (Kubernetes' runAsNonRoot can only verify numeric ids); the
# chart runs the operator as 10001 with a read-only root filesystem and TMPDIR on an emptyDir.
RUN groupadd --system --gid 10001 pqmpc \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/pqmpc --create-home --shell /usr/sbin/nologin pqmpc
ENV PATH=/opt/pqmpc/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OQS_INSTALL_PATH=/opt/liboqs \
    LD_LIBRARY_PATH=/opt/liboqs/lib
WORKDIR /var/lib/pqmpc
USER 10001:10001
# operator: liveness 8080, metrics 9090; node: API 8443, peer links 9443.
EXPOSE 8080 9090 8443 9443
CMD ["pqmpc-operator"]
