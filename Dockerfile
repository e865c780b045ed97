# The CLV Airflow image: Airflow 3.3 (CeleryExecutor) + clv_jobs + the DAGs, from the lock.
# One image for every Airflow process of docker-compose.yaml (api-server, scheduler,
# dag-processor, triggerer, celery workers, init jobs); the command picks the process.
#
# Base: python:3.12-slim-bookworm, not apache/airflow:3.3.2-python3.12. requirements.txt is
# our lock (Airflow 3.3.2 and every transitive package pinned, tested by `make test`).
# The official image already carries a few hundred packages pinned by Airflow's own
# constraints (other pandas, numpy, SQLAlchemy… than ours) plus providers we do not use;
# installing the lock on top would give a mix that neither CI nor Airflow tested. From a
# bare Python the image holds exactly the lock, on the Debian release CI runs on.
#
# Build: docker compose build   (or: docker build -t clv-airflow:local .)

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# --- sources: what the image copies, with the folders git drops when empty (config/) -----
FROM ${PYTHON_IMAGE} AS sources
WORKDIR /src
# .dockerignore is an allowlist: only the lock, clv_jobs, dags, plugins, sql, config and
# deploy/image reach the build.
COPY . .
RUN mkdir -p dags plugins sql config

# --- the image ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:${PATH} \
    AIRFLOW_HOME=/opt/airflow \
    CLV_CONFIG_DIR=/opt/clv/config \
    HOME=/home/airflow \
    USER=airflow

# g++: PyTensor (under pymc-marketing) compiles some of its graph to C at run time; without
#      a compiler it warns and falls back to slower Python code. It is what CI runs with.
# tini: PID 1 that forwards signals (a celery worker's warm shutdown on SIGTERM) and reaps.
# curl: the api-server and scheduler health checks.
# Debian versions are not pinned: the base image tag fixes the release, and a point
# release's security fixes should come in with a rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ tini curl \
    && rm -rf /var/lib/apt/lists/*

# The airflow user, uid 50000 and group 0 (root group) as in the official image: the
# compose file may run the processes as another uid (AIRFLOW_UID) in group 0, so what they
# write is group-0 writable, and /etc/passwd is too (clv-entrypoint adds that uid).
RUN useradd --uid 50000 --gid 0 --create-home --home-dir /home/airflow --shell /bin/bash airflow \
    && chmod g+w /etc/passwd

# 1. The lock, in its own layer: rebuilt only when requirements.txt changes.
COPY --from=sources /src/requirements.txt /opt/clv/requirements.txt
RUN python -m venv /opt/venv \
    && pip install -r /opt/clv/requirements.txt
# What this stack needs beyond clv_jobs, checked by distribution name (importing airflow
# here would write an airflow.cfg with generated secrets into the image).
RUN python -c "import importlib.metadata as m; [m.version(d) for d in ('apache-airflow-providers-celery', 'celery', 'redis', 'psycopg')]" \
    || { echo "requirements.txt lacks the celery extra of apache-airflow (celery provider, celery, redis) or psycopg: re-run make lock" >&2; exit 1; }

# 2. clv_jobs, installed in place (editable, no dependencies: the lock has them): its
#    PostgreSQL source reads the queries of sql/ beside the package (clv_jobs/sources.py,
#    SQL_DIR = <package>/../sql), so the package runs from /opt/clv next to /opt/clv/sql.
COPY --from=sources /src/pyproject.toml /src/README.md /opt/clv/
COPY --from=sources /src/clv_jobs /opt/clv/clv_jobs
COPY --from=sources /src/sql /opt/clv/sql
RUN pip install --no-deps --no-build-isolation -e /opt/clv \
    && python -m compileall -q /opt/clv/clv_jobs \
    && clv --help > /dev/null

# 3. Account settings (docker-compose.yaml mounts deploy/config over this), DAGs, plugins.
COPY --from=sources /src/config /opt/clv/config
COPY --from=sources /src/dags /opt/airflow/dags
COPY --from=sources /src/plugins /opt/airflow/plugins
COPY --from=sources /src/deploy/image/clv-entrypoint /src/deploy/image/clv-healthcheck /usr/local/bin/

# Writable by the airflow user and group 0: Airflow's home (airflow.cfg, the passwords
# file, logs), the local Datamodel outbox, $HOME (PyTensor's and Numba's compile caches).
# The code (venv, /opt/clv, dags, plugins) stays root's: read-only to the processes.
RUN chmod 755 /usr/local/bin/clv-entrypoint /usr/local/bin/clv-healthcheck \
    && mkdir -p /opt/airflow/logs /opt/clv/outbox \
    && chown airflow:0 /opt/airflow \
    && chown -R airflow:0 /opt/airflow/logs /opt/clv/outbox /home/airflow \
    && chmod -R g+rwX /opt/airflow/logs /opt/clv/outbox /home/airflow \
    && chmod g+rwx /opt/airflow

USER 50000
WORKDIR /opt/airflow

# api-server, task log server (workers), trigger log server, scheduler health check
EXPOSE 8080 8793 8794 8974

HEALTHCHECK --interval=30s --timeout=30s --start-period=60s --retries=5 CMD ["clv-healthcheck"]

ENTRYPOINT ["/usr/bin/tini", "--", "clv-entrypoint"]
CMD ["airflow", "api-server"]
