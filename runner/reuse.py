"""A grid sweep run again does only what is missing.

Every run is tagged with runner.digest (runner/provenance.py: its settings, its data and the
runner's version). Before a grid sweep's jobs train, the store is asked for a FINISHED run
of each job's digest; a job that has one is reused - that run's id and numbers go to its
result.json and summary.csv - and only the others train. So re-running a sweep that was
stopped halfway trains exactly what it had not finished. `sweep.rerun=true` trains every
job again; single runs and searches (Optuna) always train.
"""

from __future__ import annotations

import logging
from typing import Any

from runner import tracking
from runner.config import Config
from runner.mlflow_sink import timeout
from runner.store import default_tracking_uri

log = logging.getLogger("runner")


def finished_twins(
    confs: list[Config], contexts: list[Any], digests: list[str]
) -> dict[int, dict[str, Any]]:
    """For each job that may be reused and whose identical run (the same digest) FINISHED:
    that run (its id, metrics, params and tags), by the job's index."""
    conf, ctx = confs[0], contexts[0]
    if not ctx.reuse or conf.sweep.rerun or not conf.mlflow.enabled:
        return {}
    uri = conf.mlflow.tracking_uri or default_tracking_uri(ctx.launch_dir)
    wait = timeout(uri) * max(1.0, len(digests) / 20)  # one query a job: about 4 ms locally
    try:
        found = tracking.tracker().call(tracking.finished_runs, uri, conf.mlflow.experiment,
                                        digests, timeout=wait)  # fmt: skip
    except tracking.TrackingError as err:
        log.warning(f"runner: warning: finished runs not looked up ({err}); every job trains")
        return {}
    return {i: found[d] for i, d in enumerate(digests) if d in found}
