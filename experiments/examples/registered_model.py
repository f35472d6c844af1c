"""Measure a model kept in the MLflow Model Registry, and see its energy beside its version.

    python experiments/examples/registered_model.py

Logs a small text classifier with MLflow's transformers flavour, registers it as
`sentiment-demo`, measures `models:/sentiment-demo/<version>` through `tracker.run` (the same as
`tracker run --task text-classification --model models:/sentiment-demo/<version>`), and prints the
tags the registry now shows on that version. The classifier is the built-in tiny one (random
weights, so its accuracy means nothing); log your own model the same way.
"""

from __future__ import annotations

import mlflow
import transformers
from mlflow import MlflowClient

import tracker
from tracker.sources.models import builtin_model
from tracker.tasks import get_task


def main() -> None:
    folder = builtin_model(get_task("text-classification")).location
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    mlflow.set_experiment("models")
    with mlflow.start_run():
        info = mlflow.transformers.log_model({"model": model, "tokenizer": tokenizer}, name="classifier",
                                             task="text-classification", registered_model_name="sentiment-demo",
                                             pip_requirements=["transformers", "torch"])
    version = info.registered_model_version
    result = tracker.run(task="text-classification", model=f"models:/sentiment-demo/{version}", dataset="builtin",
                         n_samples=64, batch_size=16)
    tags = MlflowClient().get_model_version("sentiment-demo", str(version)).tags
    print(f"run {result.run_id}: {result.energy_kwh_per_1k:.3g} kWh per 1,000 inferences")
    print("registry, version", version, {k: v for k, v in sorted(tags.items()) if k.startswith("tracker.")})


if __name__ == "__main__":
    main()
