# The tamis image: Airflow 3 with the bundle's DAGs, the tamis command line, and Spark (Java)
# for the stages that run as SparkApplications. The same image serves every Airflow service
# (docker-compose.yaml), every stage pod and every Spark driver and executor (k8s/).
#
#   docker build -t tamis:0.1.0 .
#   docker run --rm tamis:0.1.0 run ingest --pipeline default      # = tamis run ingest ...
FROM python:3.11-slim-bookworm

ARG TAMIS_UID=10001
# Airflow talks to PostgreSQL in the multi-service setup; only the image needs the driver.
ARG POSTGRES_DRIVER=psycopg2-binary==2.9.13

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TAMIS_HOME=/opt/tamis \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/tamis/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/tamis/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    GX_ANALYTICS_ENABLED=False \
    SPARK_HOME=/usr/local/lib/python3.11/site-packages/pyspark \
    JAVA_HOME=/opt/java \
    PYSPARK_PYTHON=python3

# Java for Spark 4 (17+), tini to reap Spark's and tamis' worker processes, a C compiler for
# the quality rules' native text scanner (built by `pip install -e .`).
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini procps gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /opt/java

WORKDIR /opt/tamis

# Dependencies first: this layer is rebuilt only when the pins change.
COPY requirements.txt requirements-models.txt constraints.txt ./
RUN pip install -r requirements.txt -c constraints.txt "${POSTGRES_DRIVER}" \
 && pip install --no-deps -r requirements-models.txt -c constraints.txt

# Editable, as on a laptop: the pipelines (include/pipelines) and k8s/ templates are found
# beside the package, in /opt/tamis, not inside site-packages.
COPY pyproject.toml setup.py README.md ./
COPY include/ include/
RUN pip install --no-deps -e . \
 && tamis --help >/dev/null

COPY dags/ dags/
COPY plugins/ plugins/
COPY spark_jobs/ spark_jobs/
COPY k8s/ k8s/
COPY k8s/image/entrypoint.sh /usr/local/bin/tamis-entrypoint

RUN groupadd --gid "${TAMIS_UID}" tamis \
 && useradd --uid "${TAMIS_UID}" --gid tamis --home-dir /home/tamis --create-home --shell /sbin/nologin tamis \
 && mkdir -p "${AIRFLOW_HOME}/logs" "${AIRFLOW_HOME}/auth" /opt/tamis/data \
 && chown -R tamis:tamis "${AIRFLOW_HOME}" /opt/tamis/data \
 && chmod 0755 /usr/local/bin/tamis-entrypoint

USER ${TAMIS_UID}
ENTRYPOINT ["/usr/local/bin/tamis-entrypoint"]
CMD ["tamis", "--help"]
