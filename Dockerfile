# The challenge container: `docker container run ... <name>:latest /bin/bash -c "sh predict.sh"`.
# Build the CPU image (default) or a CUDA one:
#   docker build -t segfm3d .
#   docker build -t segfm3d --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 .
# Offline (what `make image-check` does where no registry or PyTorch index is reachable): another base
# with Python >= 3.11 and pip, and every wheel from a local folder mounted at build time:
#   podman build --build-arg BASE_IMAGE=localhost/segfm3d-standin:bookworm --network none \
#     --volume $PWD/build/wheels:/wheels:ro --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels .
ARG BASE_IMAGE=python:3.13-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# pip reads these from the environment; unset unless given with --build-arg.
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /workspace

COPY requirements.txt requirements-nodeps.txt ./
RUN pip install --index-url "${TORCH_INDEX}" torch==2.13.0 \
 && pip install -r requirements.txt \
 && pip install --no-deps -r requirements-nodeps.txt

COPY inference/ ./inference/
COPY weights/ ./weights/
COPY predict.sh ./predict.sh
RUN chmod 755 predict.sh && python -c "import inference.predictor, dynamic_network_architectures, maxflow"

CMD ["/bin/bash", "-c", "sh predict.sh"]
