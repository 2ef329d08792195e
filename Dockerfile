# The agent itself, for CI bots and batch runs. It drives sandboxes through the
# host's Docker daemon: run with -v /var/run/docker.sock:/var/run/docker.sock.
#   docker build -t cwm-agent .                                  (public base image)
#   docker build --build-arg BASE_IMAGE=cwm-base:bookworm -t cwm-agent .   (offline)
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# Installed from the lock (constraints.txt). TORCH_SPEC picks the build of the locked
# torch: PyPI's is the CUDA one; for the CPU wheel pass
# TORCH_SPEC="torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu".
ARG TORCH_SPEC="torch==2.13.0"
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      bash git ca-certificates python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /opt/cwm-agent
COPY constraints.txt ./
RUN pip install --no-cache-dir -c constraints.txt $TORCH_SPEC
COPY pyproject.toml README.md ./
COPY cwm_agent ./cwm_agent
RUN pip install --no-cache-dir -c constraints.txt .
ENTRYPOINT ["cwm-agent"]
CMD ["--help"]
