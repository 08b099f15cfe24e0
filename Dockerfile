# Worker image of the Cluster Management Service: Prefect worker + this project + a pinned rke.
# Build:  docker build --build-arg RKE_SHA256=<sha256 of rke_linux-amd64 v1.6.3> -t cluster-mgmt .
# The checksum is required: take it from the release's sha256sum.txt and verify it out of band.

FROM python:3.11.10-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cluster_mgmt ./cluster_mgmt
COPY flows ./flows
COPY tasks ./tasks
COPY blocks ./blocks
COPY deployments ./deployments
# Installs this project (dependencies pinned in pyproject.toml).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --prefix=/install ".[kubernetes-worker]"

FROM python:3.11.10-slim-bookworm
ARG RKE_VERSION=v1.6.3
ARG RKE_SHA256
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# rke is fetched with Python (no curl in the image) and refused unless its SHA-256 matches.
RUN test -n "${RKE_SHA256}" || { echo "build with --build-arg RKE_SHA256=<checksum>" >&2; exit 1; } \
    && python -c "import urllib.request, sys; urllib.request.urlretrieve(sys.argv[1], '/usr/local/bin/rke')" \
        "https://github.com/rancher/rke/releases/download/${RKE_VERSION}/rke_linux-amd64" \
    && echo "${RKE_SHA256}  /usr/local/bin/rke" | sha256sum -c - \
    && chmod 0755 /usr/local/bin/rke
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --create-home --home-dir /home/cluster-mgmt cluster-mgmt \
    && install -d -o cluster-mgmt -g cluster-mgmt -m 0700 /var/lib/cluster-mgmt
ENV PREFECT_HOME=/home/cluster-mgmt/.prefect \
    DO_NOT_TRACK=1 \
    PYTHONUNBUFFERED=1
# The state volume is mounted at /var/lib/cluster-mgmt by the work pool (no VOLUME here: an
# anonymous volume would silently stand in for a missing mount and lose cluster state).
USER 10001
WORKDIR /home/cluster-mgmt
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]
# A CMD, not an ENTRYPOINT: Docker and Kubernetes jobs run flow runs in this image with their
# own command.
CMD ["prefect", "worker", "start", "--with-healthcheck", "--install-policy", "never", \
     "--pool", "cluster-mgmt", "--type", "process"]
