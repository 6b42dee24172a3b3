# The astro_reduce-airflow image: Airflow 3.3.2 (Python 3.11, as the lock) + the Debian science
# tools + the pinned lock + ar_tasks (with its Astromatic/astrometry.net configurations) + the DAGs.
# Built by `docker compose build` (docker-compose.yaml has `build: .`); see README "Deploying".
#
# The slim variant: core Airflow only, so the providers and every other package come from our lock
# and nothing preinstalled is left at another version. Its tag must name the Airflow version pinned
# in requirements.txt (tests/test_compose.py checks it). The base is Debian bookworm, the release
# whose tool versions include/astromatic_configs/ is tuned for.
FROM apache/airflow:slim-3.3.2-python3.11

LABEL org.opencontainers.image.title="astro_reduce-airflow" \
      org.opencontainers.image.description="OHP T120 CCD reduction (astro_reduce) as Airflow 3 DAGs" \
      org.opencontainers.image.licenses="MIT"

USER root
# The science tools of packages.txt (source-extractor, psfex, scamp, astrometry.net, fitsverify)
# and curl for the compose health checks. astrometry.net brings Debian's own python3, which
# solve-field calls by absolute path (/usr/bin/python3 -m astrometry.util.removelines); the
# image's Python (/usr/python, first on PATH) is untouched. No index files: mount them and set
# AR_ANET_INDEX_DIR.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        source-extractor psfex scamp astrometry.net fitsverify curl \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && for tool in source-extractor psfex scamp solve-field fitsverify; do \
           command -v "$tool" || { echo "missing: $tool" >&2; exit 1; }; \
       done \
    && /usr/bin/python3 -c "import astrometry.util.removelines" \
    && mkdir -p /opt/airflow/auth /tmp/ar_src \
    && chown airflow:0 /opt/airflow/auth /tmp/ar_src \
    && chmod 2770 /opt/airflow/auth
# /opt/airflow/auth: mount point of the compose file's airflow-auth volume (the SimpleAuthManager
# passwords file), created here so a new volume starts owned by airflow and group 0.
# /tmp/ar_src: the build folder of the project, writable by airflow (pip builds in place).

USER airflow
# The whole lock, with apache-airflow pinned to the base image's version: pip refuses, rather than
# silently replacing Airflow, if the lock ever disagrees with the FROM tag.
COPY --chown=airflow:0 requirements.txt /tmp/ar_src/requirements.txt
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /tmp/ar_src/requirements.txt

# The project itself (ar_tasks and, inside it, ar_tasks.astromatic_configs), without dependencies:
# they are all in the lock.
COPY --chown=airflow:0 pyproject.toml README.md /tmp/ar_src/
COPY --chown=airflow:0 ar_tasks /tmp/ar_src/ar_tasks
COPY --chown=airflow:0 include /tmp/ar_src/include
RUN pip install --no-cache-dir --no-deps /tmp/ar_src \
    && rm -rf /tmp/ar_src \
    && python -c "from ar_tasks import astro_config; print('configs:', astro_config.shipped_dir())" \
    && pip check

# DAGs and plugins baked into the image (a bind mount over them works for development).
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
