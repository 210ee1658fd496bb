# syntax=docker/dockerfile:1

# For byte-for-byte rebuilds pin the base by digest as well as tag, e.g.
#   docker build --build-arg PYTHON_IMAGE=python:3.12-slim@sha256:<digest> .
# (`docker buildx imagetools inspect python:3.12-slim` prints the current digest).
ARG PYTHON_IMAGE=python:3.12-slim

# Build stage: turn the source tree into a wheel, then install it and its
# dependencies into a self-contained virtualenv the runtime stage copies whole.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY consumer ./consumer
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir /dist/*.whl \
 && /opt/venv/bin/pip uninstall --yes pip \
 && /opt/venv/bin/inkeep-consumer --help >/dev/null

# Runtime stage: the interpreter, the virtualenv and nothing else. Bytecode was
# compiled at install time, so the image runs on a read-only root filesystem;
# the only writable path it expects is /tmp (an emptyDir or tmpfs).
FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
RUN groupadd --system --gid "${UID}" consumer \
 && useradd --system --uid "${UID}" --gid "${UID}" --no-create-home \
      --home-dir /tmp --shell /usr/sbin/nologin consumer
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /tmp
USER ${UID}:${UID}
EXPOSE 8080
# No HEALTHCHECK here: the same image also runs the emulator and the demo
# producer, which serve no /healthz. Kubernetes and docker-compose.yml define
# their own probes per role.
ENTRYPOINT ["inkeep-consumer"]
CMD ["run"]
