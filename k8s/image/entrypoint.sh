#!/bin/bash
# Entry point of the tamis image.
#   driver ... / executor ...  a Spark on Kubernetes driver or executor (the Spark Operator's pods)
#   tamis ... / airflow ... / any command on PATH   run it as given
#   anything else  arguments to tamis:  `docker run IMAGE run ingest --pipeline default`
set -euo pipefail

# Spark resolves the current user by name; an arbitrary uid (OpenShift) has none.
if ! getent passwd "$(id -u)" >/dev/null 2>&1 && [ -w /etc/passwd ]; then
  echo "$(id -u):x:$(id -u):$(id -g):tamis:${HOME:-/tmp}:/sbin/nologin" >> /etc/passwd
fi

spark_classpath() {
  local cp="${SPARK_HOME}/jars/*"
  [ -n "${SPARK_EXTRA_CLASSPATH:-}" ] && cp="${cp}:${SPARK_EXTRA_CLASSPATH}"
  [ -n "${HADOOP_CONF_DIR:-}" ] && cp="${HADOOP_CONF_DIR}:${cp}"
  echo "${SPARK_CONF_DIR:-${SPARK_HOME}/conf}:${cp}"
}

case "${1:-}" in
  driver)
    shift
    exec tini -s -- "${SPARK_HOME}/bin/spark-submit" \
      --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS}" \
      --deploy-mode client "$@"
    ;;
  executor)
    shift
    # SPARK_JAVA_OPT_<n> are set by Spark on the executor pod, in order.
    mapfile -t java_opts < <(env | grep '^SPARK_JAVA_OPT_' | sort -t_ -k4 -n | sed 's/[^=]*=\(.*\)/\1/')
    exec tini -s -- "${JAVA_HOME}/bin/java" "${java_opts[@]}" \
      -Xms"${SPARK_EXECUTOR_MEMORY}" -Xmx"${SPARK_EXECUTOR_MEMORY}" \
      -cp "$(spark_classpath):${SPARK_DIST_CLASSPATH:-}" \
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
      --driver-url "${SPARK_DRIVER_URL}" --executor-id "${SPARK_EXECUTOR_ID}" \
      --cores "${SPARK_EXECUTOR_CORES}" --app-id "${SPARK_APPLICATION_ID}" \
      --hostname "${SPARK_EXECUTOR_POD_IP}" --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID}" \
      --podName "${SPARK_EXECUTOR_POD_NAME}" "$@"
    ;;
  "")
    exec tini -s -- tamis --help
    ;;
  *)
    if command -v -- "$1" >/dev/null 2>&1; then
      exec tini -s -- "$@"
    fi
    exec tini -s -- tamis "$@"
    ;;
esac
