"""A study: every model x dataset of a definition in experiments/, each as its own measured run.

Each run happens in a child process (``tracker run``), so a model that crashes the interpreter
(SIGILL, a segfault, the OOM killer) fails alone. Combinations that already have a FINISHED run
with the same measured configuration (tag ``tracker.config_key``) and no fallback are skipped
unless ``force``. A run that fails is recorded FAILED with its reason, also when it failed before
``tracker run`` could create it, and the study goes on.

Where the runs happen is the executor's business, behind one small interface (a function that
measures the pending combinations and yields each outcome as it ends): ``local`` measures them
one after another on this machine; ``ray`` spreads them over a Ray cluster, one measurement per
node (or per GPU) at a time (``tracker.study.on_ray``).
"""

from __future__ import annotations

import logging
from typing import Any

from tracker.execution.remeasure import REMEASURE_TRIES, REMEASURED_BY
from tracker.runs.config import RunConfig
from tracker.study.definition import Combination, StudyDefinition, load_definition
from tracker.study.outcomes import Executor, Outcome, Pending, Progress

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")

__all__ = ["Combination", "Outcome", "StudyDefinition", "load_definition", "run_study", "finished_run"]


def run_study(definition: StudyDefinition, *, force: bool = False, executor: str = "local",
              address: str | None = None, per_node: int = 1, remeasure: int = REMEASURE_TRIES) -> list[Outcome]:
    """Measure every combination not measured yet (all with ``force``) through the executor; never
    stops early for a failed one. A contended measurement is taken again, up to ``remeasure`` more
    times (``tracker.execution.remeasure``). Outcomes come back in the definition's order."""
    from mlflow import MlflowClient

    client = MlflowClient()
    outcomes: dict[int, Outcome] = {}
    pending: Pending = []
    for number, combination in enumerate(definition.combinations, 1):
        done = None if force else finished_run(client, combination.config)
        if done is None:
            pending.append((number, combination))
            continue
        logger.info("%s: skipped, FINISHED already as run %s (--force to measure again)", combination.label, done)
        outcomes[number] = Outcome(combination, "SKIPPED", done, "already FINISHED")
    progress = Progress(len(definition.combinations), done=len(outcomes))
    if executor == "ray":
        from tracker.study.on_ray import ray_executor

        measure: Executor = ray_executor(address=address, per_node=per_node, remeasure=remeasure)
    else:
        from functools import partial

        from tracker.study.local import measure_locally

        measure = partial(measure_locally, remeasure=remeasure)
    for number, outcome in measure(client, definition, pending, progress):
        outcomes[number] = outcome
    return [outcomes[n] for n in sorted(outcomes)]


def finished_run(client: Any, config: RunConfig) -> str | None:
    """The id of a FINISHED run of this exact configuration that used what it asked for."""
    experiment = client.get_experiment_by_name(config.experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=(f"tags.`tracker.config_key` = '{config.key()}' and attributes.status = 'FINISHED'"),
        max_results=50)
    return next((r.info.run_id for r in runs if r.data.tags.get("tracker.run.fallback") != "true"
                 and REMEASURED_BY not in r.data.tags), None)
