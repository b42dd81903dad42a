# syntax=docker/dockerfile:1
#
# failovervm-operator: one image for both components.
#   controller:  failovervm controller --storage-root ... (non-root, the default USER 65532)
#   agent:       failovervm agent --node ...              (the Helm DaemonSet runs it as root, privileged)
#
# Base images are pinned by exact tag. Production builds should also pin the digest
# (FROM python:3.11.14-slim-bookworm@sha256:<digest>; get it with
# `docker buildx imagetools inspect python:3.11.14-slim-bookworm`); it is not recorded here
# because this repository is developed offline, where the digest cannot be looked up.
# Debian bookworm, as the rest of the project: libvirt 9.0.

############################################################################################
# builder: wheels for the project and all its dependencies (libvirt-python compiles here)
############################################################################################
FROM python:3.11.14-slim-bookworm AS builder

# Debian package versions are not pinned (DL3008): bookworm point releases replace them, so exact
# pins break the build; the base image tag fixes the Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libvirt-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# The dependencies first (a layer cached until requirements.txt changes): requirements.txt pins
# pyproject.toml's dependencies and everything they pull in.
COPY requirements.txt ./
RUN pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.txt

# Then the project itself: the product package only. The sandbox (operator/failovervm_sandbox) is a
# development tool that stays out of the build context and the image.
COPY pyproject.toml README.md ./
COPY operator/failovervm ./operator/failovervm
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

############################################################################################
# runtime
############################################################################################
FROM python:3.11.14-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="failovervm-operator" \
      org.opencontainers.image.description="Kubernetes operator for SR-IOV VMs that keep their network across live migration" \
      org.opencontainers.image.licenses="Apache-2.0"

# libvirt0: the C library libvirt-python links against; libvirt-clients: virsh, for debugging
# the node's libvirtd from the agent container; qemu-utils: qemu-img, with which the agent reads each
# disk image's header (format, backing file) before it defines a domain. No compiler, no headers.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libvirt0 libvirt-clients qemu-utils \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only the builder's wheels, never the index: the image holds exactly the locked versions.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/failovervm_operator-*.whl \
    && failovervm --help > /dev/null

RUN groupadd --system --gid 65532 failovervm \
    && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin failovervm

USER 65532:65532
ENTRYPOINT ["failovervm"]
CMD ["--help"]
