# syntax=docker/dockerfile:1
# The qscale operator image:  docker build -t qscale:0.1.0 .
# Two stages: `build` installs qscale and CPU-only torch into a virtual environment; the final
# stage is the slim Python base, that environment (the default model is package data inside it)
# and a non-root user -- no compilers, no pip runs, nothing written at run time outside /tmp, so
# it runs under a read-only root filesystem (the chart mounts an emptyDir at /tmp).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/qscale/bin:$PATH
RUN python -m venv /opt/qscale
# torch pinned, from the CPU-only index (the default index serves a multi-GB CUDA build).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN pip install /src \
 && python -c "from qscale.policy.default import has_default_model as h; assert h(), 'no default model'" \
 && python -m compileall -q /opt/qscale/lib \
 && pip uninstall -y pip setuptools wheel

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 qscale \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin qscale
COPY --from=build /opt/qscale /opt/qscale
# PYTHONMALLOC=malloc: Python's objects from glibc's malloc instead of its own arenas, which
# the operator's per-tick churn fragments: its memory kept growing at 1,000 policies where
# with malloc it levels off after a few minutes (BENCHMARKS.md, "Where the growth is").
ENV PATH=/opt/qscale/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    OMP_NUM_THREADS=1 \
    QSCALE_TORCH_THREADS=1 \
    PYTHONMALLOC=malloc
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["qscale", "operator"]
