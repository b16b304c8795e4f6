# syntax=docker/dockerfile:1
# Production image: this code location with the Dagster webserver and daemon (one image, two
# commands). The default command serves the UI; run the daemon with
#   docker run ... IMAGE dagster-daemon run -w /app/workspace.yaml
# Instance config: deploy/dagster.yaml (runs and events in PostgreSQL, DAGSTER_PG_* variables).

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY mysqlsync_dagster ./mysqlsync_dagster
# The project with dagster-postgres, every dependency at the version requirements.lock pins (the
# ones CI tests). The lock is a constraints file here: only what ".[postgres]" needs is
# installed, not the lock's dev tools.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir -c requirements.lock ".[postgres]"

FROM python:3.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TZ=UTC \
    DAGSTER_HOME=/opt/dagster/home \
    TABLES_CONFIG=/app/tables.json \
    STAGING_DIR=/var/lib/mysqlsync/staging
# A fixed, numeric, unprivileged user (uid and gid 10001): volumes can be chowned to it.
RUN groupadd --system --gid 10001 dagster \
    && useradd --system --uid 10001 --gid dagster --home-dir /opt/dagster --no-create-home dagster \
    && mkdir -p "${DAGSTER_HOME}/storage" "${STAGING_DIR}" \
    && chown -R dagster:dagster /opt/dagster "${STAGING_DIR}"
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=dagster:dagster deploy/dagster.yaml ${DAGSTER_HOME}/dagster.yaml
COPY workspace.yaml tables.json ./
# Parquet files of staging-mode tables; keep them across restarts so a failed load resumes.
VOLUME ["/var/lib/mysqlsync/staging"]
USER 10001:10001
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/server_info', timeout=4)"]
CMD ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "/app/workspace.yaml"]
