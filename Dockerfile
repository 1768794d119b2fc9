# The service image: the locked dependencies (deploy/requirements.lock, with hashes), the pinned
# torch and the package, run as a non-root user.
# The base image, pinned by digest (README, Deployment): `make pin-base-image` asks the registry
# for python:3.11-slim's current digest and writes it here; rerun it for the base's security updates.
ARG BASE_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
FROM ${BASE_IMAGE}

# CPU image by default; the compose file's GPU variant builds with TORCH_INDEX="" so that pip
# takes PyPI's CUDA build of the same pinned torch.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Optional extras of the package, e.g. `postgres` for shared state (compose profile `scale`).
ARG EXTRAS=""
ENV PIP_EXTRA_INDEX_URL=${TORCH_INDEX} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

RUN apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 unet \
    && mkdir -p /state && chown unet:unet /state  # a named volume inherits this owner

WORKDIR /app
COPY --chown=unet:unet pyproject.toml README.md LICENSE Makefile ./
COPY --chown=unet:unet deploy/requirements.lock ./deploy/requirements.lock
COPY --chown=unet:unet model ./model
COPY --chown=unet:unet service ./service
USER unet
# Every dependency from the lock, each checked against its hash; then torch at its pinned
# version (its own exact pins bring the CUDA libraries of PyPI's build); then the package itself
# without resolving anything again; `pip check` fails the build if the three disagree.
RUN python3 -m venv .venv \
    && .venv/bin/pip install --quiet --require-hashes --no-deps -r deploy/requirements.lock \
    && .venv/bin/pip install --quiet torch==2.13.0 \
    && .venv/bin/pip install --quiet --no-deps -e ".${EXTRAS:+[$EXTRAS]}" \
    && .venv/bin/pip check

ENV UNET_HOST=0.0.0.0 \
    UNET_PORT=8000 \
    UNET_STATE_DIR=/state
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/app/.venv/bin/python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
CMD ["/app/.venv/bin/unet", "serve"]
