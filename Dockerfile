# megatron_ixt on NVIDIA's PyTorch container, which brings CUDA, cuDNN, NCCL, Transformer
# Engine and apex built for each other. Build and run (docs/cluster.md has more):
#
#   docker build -t megatron-ixt:0.1.0 .
#   docker run --rm -it --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
#       -v /shared:/shared megatron-ixt:0.1.0
#
# The build runs the tests that need no GPU (docker build has none); see the end.

# Pinned: 25.12 = PyTorch 2.10.0a0, CUDA 13.1, Python 3.12, Ubuntu 24.04 (NVIDIA's release
# notes). For a reproducible build pin the digest too: --build-arg BASE_IMAGE=...@sha256:...
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.12-py3
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1

WORKDIR /opt/megatron_ixt

# Dependencies in their own layer, so that code changes do not reinstall them. The image's
# pip constraints (/etc/pip/constraint.txt, via PIP_CONSTRAINT) keep its own torch, numpy,
# Transformer Engine... in place: pip fails rather than replace them with PyPI builds.
RUN pip install "megatron-core>=0.16.1,<0.17" "sentencepiece>=0.2" "tokenizers>=0.20" \
        pyyaml psutil tensorboard pytest zstandard protobuf numba httpx tqdm "transformers>=5,<6" "safetensors>=0.4"
# The text critic's dictionary signal reads Debian's word lists (the demo and its tests).
USER root
RUN apt-get update && apt-get install -y --no-install-recommends wamerican wbritish && rm -rf /var/lib/apt/lists/*

# --no-deps: setup.py pins the CPU development torch (torch==2.13.0); here the container's
# CUDA build is the one to use, and the dependencies are installed above.
COPY . .
RUN pip install --no-deps --no-build-isolation -e . \
    && python -c "import megatron_ixt, megatron.core; print('megatron-core', megatron.core.__version__)"

# An unprivileged user. (enroot/pyxis ignore it and run as the submitting user.) The uid
# is high so it does not collide with the image's own users (Ubuntu's "ubuntu" is 1000).
RUN useradd --create-home --uid 10001 --shell /bin/bash ixt
USER ixt

# Build-time tests, on the CPU (gloo), against the container's own torch and megatron-core:
# - the configuration, format, tokenizer, preprocessing and data tests (tests/config,
#   tests/format, tests/tokenizers, tests/preprocess, tests/data), not those
#   marked slow or gpu;
# - a 6-iteration training run with TP=2 on two CPU processes (the CPU compatibility layer
#   and the checkpoint save against this torch).
# A failure stops the build: an image that cannot train on the CPU will not train on GPUs.
# --build-arg RUN_TESTS=0 skips them (then run the same commands in the container).
ARG RUN_TESTS=1
RUN [ "$RUN_TESTS" = 0 ] || { python -m pytest -q -p no:cacheprovider -m "not slow and not gpu" tests/config tests/format tests/tokenizers tests/preprocess tests/data \
    && cd /tmp \
    && OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 /opt/megatron_ixt/pretrain_ixt.py \
        --config /opt/megatron_ixt/examples/configs/tiny.yaml --mock-data --tensor-model-parallel-size 2 \
        --train-iters 6 --eval-interval 0 --save /tmp/smoke-ckpt --save-interval 6 \
    && test "$(cat /tmp/smoke-ckpt/latest_checkpointed_iteration.txt)" = 6 \
    && rm -rf /tmp/smoke-ckpt /tmp/pytest-of-ixt; }

WORKDIR /home/ixt
CMD ["bash"]
