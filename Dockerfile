# Backoffice Admin image: one image, three roles (`backoffice web`, `backoffice worker`,
# `backoffice migrate`), chosen by the command. See docker-compose.yml for the topology.
#
# Stages:
#   assets   node:20-slim, fetches the pinned htmx.org npm package (Node never reaches the
#            final image)
#   build    python:3.11-slim, installs the project and its dependencies into /opt/venv
#   runtime  python:3.11-slim, the venv plus htmx, running as an unprivileged user

# ---------------------------------------------------------------------------------------
FROM node:20-slim AS assets
WORKDIR /assets
COPY package.json ./
RUN npm install --no-audit --no-fund \
    && test -s node_modules/htmx.org/dist/htmx.min.js

# ---------------------------------------------------------------------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject.toml alone, so source edits reuse this layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(deps))" > /tmp/requirements.txt \
    && pip install --upgrade pip \
    && pip install -r /tmp/requirements.txt

# The project itself (what goes into the build context is filtered by .dockerignore).
COPY . .
COPY --from=assets /assets/node_modules/htmx.org/dist/htmx.min.js web/static/vendor/htmx.min.js
# The app serves web/static from the installed `web` package; pyproject's package-data globs
# (static/*.js) do not reach static/vendor/, so htmx is also placed there explicitly.
RUN pip install --no-deps . \
    && pip check \
    && site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
    && mkdir -p "$site/web/static/vendor" \
    && cp web/static/vendor/htmx.min.js "$site/web/static/vendor/htmx.min.js" \
    && cd / && python -c "import core.cli" \
    && command -v backoffice

# ---------------------------------------------------------------------------------------
FROM python:3.11-slim AS runtime
LABEL org.opencontainers.image.title="backoffice-admin" \
      org.opencontainers.image.description="Backoffice Admin: FastAPI web, Temporal worker, migrations"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BACKOFFICE_ENV=production \
    BACKOFFICE_DATA_DIR=/var/lib/backoffice \
    WEB_HOST=0.0.0.0 \
    WEB_PORT=8000

RUN groupadd --system --gid 10001 backoffice \
    && useradd --system --uid 10001 --gid backoffice \
       --home-dir /var/lib/backoffice --no-create-home --shell /usr/sbin/nologin backoffice \
    && install -d -o backoffice -g backoffice -m 0750 /var/lib/backoffice

COPY --from=build /opt/venv /opt/venv

# An empty, root-owned working directory: no stray .env is picked up, nothing is writable.
WORKDIR /app
USER 10001:10001

EXPOSE 8000
CMD ["backoffice", "web"]
