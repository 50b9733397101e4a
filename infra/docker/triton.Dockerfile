# syntax=docker/dockerfile:1
# LineSight Triton image: NVIDIA's tritonserver plus what the python-backend models import:
# `tablet_preprocess` (pipeline.model.preprocess: numpy<2, pillow) and the measurement models of
# the recipe kinds (pipeline.inspections: pydantic, opencv-python-headless for the vial and blister
# kernels; `label_reader` also zxing-cpp, docs/recipes.md).
# The model repository is not
# baked in: docker-compose mounts ./triton_models read-only at /models.
#
#   docker build -f infra/docker/triton.Dockerfile -t linesight/triton:0.1.0-24.10 .
#
# 24.10 is Triton 2.51.0, the same server the embedded stack runs (nvidia-pytriton 0.7.0), so
# one model repository behaves the same in both. Its python backend stub runs the image's
# Python 3.10 with ONNX Runtime 1.19 for the onnxruntime backend (see docs/deployment.md).
#
# The base image is pinned by its NGC release tag, not yet by digest (docs/deployment.md, "Locked builds",
# says how plant IT records and pins the digest).
ARG TRITON_VERSION=24.10
FROM nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONDONTWRITEBYTECODE=1

# Exact versions with sha256 hashes for this image's Python 3.10: requirements/triton.txt, locked by
# `make lock` from requirements/triton.in. --no-deps: nothing is resolved here. The second install
# resolves nothing either (--no-index): it fails the build if the lock ever leaves the ranges the models
# need (requirements/triton.in; tests/unit/test_locks.py keeps the two lists equal):
# numpy<2: the python backend of this Triton breaks response tensors with numpy 2.
# opencv-python-headless<4.12: 4.12 and later require numpy 2.
COPY requirements/triton.txt /tmp/linesight-requirements/triton.txt
RUN python3 -m pip install --require-hashes --no-deps -r /tmp/linesight-requirements/triton.txt \
    && python3 -m pip install --no-index --no-deps "numpy>=1.26,<2" "pillow>=10" "pydantic>=2.6" "zxing-cpp>=2.3" \
        "opencv-python-headless>=4.10,<4.12" "setuptools>=77"

# Only the `pipeline` code, without its service dependencies (Kafka, ClickHouse, ...): the stub
# imports nothing else. The package declares Python 3.11; this image's stub runs 3.10, hence
# --ignore-requires-python and the import check below, which fails the build (not the model
# load on the line) if the preprocessing code stops importing here.
WORKDIR /tmp/linesight-src
COPY pyproject.toml README.md* ./
COPY pipeline ./pipeline
COPY streams ./streams
COPY tools/lockcheck.py ./tools/lockcheck.py
# Built with the lock's setuptools (no unhashed build environment); then every locked package must be the
# one Python imports, at the locked version (the base image's own packages are not the lock's business).
RUN python3 -m pip install --no-deps --no-build-isolation --ignore-requires-python . \
    && python3 tools/lockcheck.py --subset /tmp/linesight-requirements/triton.txt \
    && cd / && rm -rf /tmp/linesight-src /tmp/linesight-requirements \
    && python3 -c "import numpy, PIL, zxingcpp, cv2; from pipeline.model import preprocess; \
from pipeline.inspections import vial, blister, label, serving; \
assert int(numpy.__version__.split('.')[0]) < 2, numpy.__version__; \
print('pipeline.model.preprocess and pipeline.inspections OK: numpy', numpy.__version__, 'pillow', PIL.__version__)"
WORKDIR /opt/tritonserver
