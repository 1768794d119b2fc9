# The service image: the README's install step (`make install`), run as a non-root user.
FROM python:3.11-slim

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
COPY --chown=unet:unet model ./model
COPY --chown=unet:unet service ./service
USER unet
RUN make install \
    && if [ -n "$EXTRAS" ]; then .venv/bin/pip install --quiet -e ".[$EXTRAS]"; fi

ENV UNET_HOST=0.0.0.0 \
    UNET_PORT=8000 \
    UNET_STATE_DIR=/state
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/app/.venv/bin/python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
CMD ["/app/.venv/bin/unet", "serve"]
