# batchrun image: `docker build --build-arg EXTRA_PIP="evals" -t REGISTRY/batchrun:TAG .`
# EXTRA_PIP adds the eval framework the evals need (e.g. "evals", "inspect-ai", "gcsfs").
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG EXTRA_PIP=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY batchrun/ batchrun/
# EXTRA_PIP is left unquoted on purpose: it is a list of requirement specifiers.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install . ${EXTRA_PIP}

FROM ${PYTHON_IMAGE}
# tini as PID 1: it reaps zombies and, with -g, forwards SIGTERM to batchrun's process group.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.* \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
# Everything batchrun and the evals write goes to /tmp (an emptyDir in the Job), so the root
# filesystem can be mounted read-only.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["tini", "-g", "--", "batchrun"]
CMD ["--help"]
