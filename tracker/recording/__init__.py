"""Recording runs in MLflow: the run lifecycle (never left RUNNING), signals during a run, the local
spool when the server is lost, bulk writes, and the names of the logged metrics.
"""
