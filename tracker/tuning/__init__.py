"""Search batch size, precision and the other knobs asked for, for the lowest carbon per output
that keeps quality (Optuna).

Layout of a search, in MLflow and Optuna:

- one Optuna study per search (name and storage given, or derived), one MLflow *parent* run for
  it, in the task's experiment;
- a *baseline* run at the paper's protocol (batch 1, fp32): its quality is the reference of the
  constraint, its carbon per output the denominator of ``carbon_reduction_x``; measured first by
  the worker that creates the study, then again by every worker after each ``baseline_every`` of
  its trials, so that the comparison spans the same drift in the machine's load as the trials;
  each measurement is stored on the study;
- one nested MLflow run per trial, measured in a child process; the trials that share a model
  load (the batch sizes of one precision) share one child (``tracker.execution.child.SharedLoadChild``), so a
  trial that kills its process (SIGILL, a segfault, the OOM killer) is recorded FAILED with the
  signal's name, that precision alone suffers, and the search goes on.

The next setting comes from the strategy (``strategies``): ``structured`` by default (each
precision probed where it runs, then the most promising first: bisection where quality breaks, the
batch neighbours while cheaper, the other knobs on the leader, then the leader and runner-up
measured again), or Optuna's TPE, GP, random or grid sampler.

Every measurement has at least ``MIN_WINDOWS`` query windows, so each carbon figure has a spread;
a trial whose windows were contended (other processes busy on the machine) is measured again.
``carbon_reduction_x`` comes with a 95% interval from the baseline's and the best trial's windows,
and when the best and the runner-up's intervals overlap the search says it is a tie.

A trial is feasible when its quality is at least reference x (1 - max_quality_drop) (at most
reference x (1 + drop) for lower-is-better metrics such as WER). Infeasible trials stay in the
study, marked, and are never reported as best. Settings already measured are not measured again
(the trial is pruned as a duplicate, pointing at the first, and does not count towards
``n_trials``) unless repeats are asked for.

The package, by concern: ``config`` (the search's settings and the quality constraint),
``strategies`` (the structured strategy and the samplers), ``storage`` (the study database and its
lock), ``baseline`` (the reference measurement
and the spreads stored on the study), ``search`` (the search and its objective), ``results`` (the
best settings, the summary and the plots on the parent run). The runs themselves are opened and
ended by ``tracker.recording.lifecycle``.
"""

from tracker.tuning.config import DEFAULT_STORAGE, TuneConfig, feasibility
from tracker.tuning.search import tune

__all__ = ["DEFAULT_STORAGE", "TuneConfig", "feasibility", "tune"]
