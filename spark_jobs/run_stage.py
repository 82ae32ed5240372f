"""The driver of a SparkApplication: ``tamis <arguments>`` with every stage on Spark.

spark-submit (the Spark Operator's driver, or by hand) starts this file with the same
arguments a pod gives ``tamis``::

    spark-submit spark_jobs/run_stage.py run near_dedup --pipeline default --run-id R [--param K=V ...]

The stage then runs on the Spark engine (tamis.engines.spark): its shards as Spark tasks,
its global step (a whole-dataset stage's plan) as Spark jobs, on the session spark-submit
configured (master, executors, sparkConf).
"""

from __future__ import annotations

import sys

from tamis.cli import main

if __name__ == "__main__":
    sys.exit(main([*sys.argv[1:], "--engine", "spark"]))
