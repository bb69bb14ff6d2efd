# syntax=docker/dockerfile:1
#
# Stages:
#   graphiql GraphiQL's pinned npm assets (`npm ci` of server/web/graphiql), so /graphql
#            works offline; only the files server/web/graphiql.py serves reach the wheel
#   builder  installs the project (a wheel built from this checkout) into /opt/venv
#   test     the source tree + `.[test]` + redis-server, runs pytest (docker compose --profile test)
#   runtime  the default (last) stage: python:3.12-slim, /opt/venv only, non-root, `kasparro serve`

ARG PYTHON_IMAGE=python:3.12-slim
ARG NODE_IMAGE=node:22-bookworm-slim

# ---------------------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS graphiql

WORKDIR /assets
COPY server/web/graphiql/package.json server/web/graphiql/package-lock.json \
    server/web/graphiql/.npmrc ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --no-audit --no-fund --loglevel=error

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /src
# Only what the wheel is built from: tests, docs and deployment files stay out of the image.
COPY pyproject.toml README.md ./
COPY server ./server
COPY schema ./schema
COPY workers ./workers
COPY migrations ./migrations
COPY --from=graphiql /assets/node_modules ./server/web/graphiql/node_modules

# Every dependency ships manylinux wheels, so no compiler is needed. Bytecode is compiled here
# because the runtime user cannot write to /opt/venv.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --wheel-dir /wheels . \
    && pip install /wheels/*.whl

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS test

# The test suite starts private redis-server instances besides the shared Redis, and drives
# Debian's Chromium in its browser tests.
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server chromium \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv \
    && groupadd --system --gid 10001 kasparro \
    && useradd --system --uid 10001 --gid kasparro --create-home --shell /usr/sbin/nologin kasparro \
    && install -d -o kasparro -g kasparro /src

WORKDIR /src
COPY --chown=kasparro:kasparro . .
COPY --from=graphiql --chown=kasparro:kasparro /assets/node_modules ./server/web/graphiql/node_modules
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -e '.[test]'

# Non-root, like production: permission-dependent tests mean the same thing here.
USER 10001:10001
CMD ["pytest"]

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1
ENV KASPARRO_HOST=0.0.0.0 KASPARRO_PORT=8000 PYTHONUNBUFFERED=1

# /app is the working directory: `kasparro up` without DATABASE_URL writes ./kasparro.db there,
# and the default KASPARRO_CSV_PATHS reads ./data/*.csv (mount files into /app/data).
RUN groupadd --system --gid 10001 kasparro \
    && useradd --system --uid 10001 --gid kasparro --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin kasparro \
    && install -d -o kasparro -g kasparro /app /app/data

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

EXPOSE 8000

# Liveness of `kasparro serve`. Containers of the same image that serve no HTTP
# (`kasparro worker`, `kasparro migrate`) disable it: see docker-compose.yml.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["kasparro", "serve"]
