#!/usr/bin/env bash
# Run HERE (a machine that reaches PyPI), from the repository root, before a GPU check.
#
# The lent GPU machine has Python 3.12 with torch, numpy, pillow, scikit-learn and friends, but
# no FastAPI stack and no network; this fetches the missing pure-Python and manylinux wheels
# into .whl/ (git-ignored), which the device run carries (`carry: [".whl"]`).
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl && mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 httptools==0.9.0 \
    pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4 \
    python-multipart==0.0.34 annotated-types==0.8.0 typing-inspection==0.4.5 \
    opentelemetry-api==1.45.2
ls -la .whl
du -sh .whl
