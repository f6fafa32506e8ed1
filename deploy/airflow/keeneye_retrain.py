"""Example Airflow DAG: retrain keeneye pipelines on a schedule of your orchestrator's choosing.

keeneye's own scheduler (``keeneye up``) already retrains on the triggers of each pipeline spec
(``training.retrain``: cron schedule, new labels, drift, quality drop). Use this DAG instead when an
existing Airflow owns batch jobs: leave ``training.retrain.schedule`` unset in the specs and let
Airflow call the same code path.

Each task runs ``keeneye retrain PIPELINE --reason scheduled``: it records a ``manual`` training run
(visible in ``keeneye runs PIPELINE`` and ``GET /v1/pipelines/{name}/runs``), builds the dataset from
the champion's training data plus every labelled observation, fine-tunes from the champion, gates the
result and registers it (alias ``challenger`` only when the gates pass).

Exit status: 0 succeeded, 3 refused by the gates, 2 failed. A refused model is no failure of the
pipeline, so ``skip_on_exit_code=3`` shows it as *skipped* rather than *failed*.

The workers need keeneye installed with the ``train`` extra and the same environment as the rest of
the deployment (``KEENEYE_DATABASE_URL``, ``KEENEYE_REGISTRY_URI``, ``KEENEYE_OBJECTS_URL``, …); copy
this file into the DAGs folder and adjust ``PIPELINES``, ``SCHEDULE`` and ``ENV``.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

PIPELINES = ["line-inspection", "species-id", "crop-health"]
SCHEDULE = "0 2 1 * *"  # 02:00 on the 1st of each month (line-inspection retrains monthly)
ENV = {
    name: os.environ[name]
    for name in (
        "KEENEYE_HOME",
        "KEENEYE_DATABASE_URL",
        "KEENEYE_REGISTRY_URI",
        "KEENEYE_OBJECTS_URL",
        "KEENEYE_PIPELINES__DIRS",
    )
    if name in os.environ
}

with DAG(
    dag_id="keeneye_retrain",
    description="Retrain keeneye pipelines from the champion's data plus labelled feedback",
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # one training per pipeline at a time (keeneye refuses a second one anyway)
    default_args={"retries": 1, "retry_delay": timedelta(minutes=30)},
    tags=["keeneye", "ml"],
) as dag:
    for pipeline in PIPELINES:
        BashOperator(
            task_id=f"retrain_{pipeline.replace('-', '_')}",
            bash_command=f"keeneye retrain {pipeline} --reason scheduled --json",
            env=ENV,
            append_env=True,
            skip_on_exit_code=3,
            execution_timeout=timedelta(hours=12),
        )
