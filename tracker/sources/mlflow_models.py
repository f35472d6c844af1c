"""Models kept in MLflow: ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` and ``runs:/RUN_ID/PATH``.

A transformers-flavour model is read as the folder its weights and components were saved in, so
the task's own code loads and runs it like any local folder. Any other model is loaded with
``mlflow.pyfunc`` and runs through its ``predict`` on the dataset's inputs, for tasks whose
predictions can be read from its outputs. A run of a registered version tags that version with its
latest energy and quality, so the Model Registry shows them beside each version.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tracker.errors import ConfigError, ModelLoadError

logger = logging.getLogger(__name__)

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+|latest)|@(?P<alias>[\w-]+))$")
_RUN_URI = re.compile(r"^runs:/(?P<run_id>[0-9a-f]{32})/(?P<path>.+)$")
_LOGGED_MODEL_ID = re.compile(r"^models:/(?P<model_id>m-[0-9a-f]{32})$")
# Tags set on a registered version after each run of it (the latest run wins).
VERSION_TAGS = ("energy_kwh_per_1k", "emissions_g_per_output", "quality")


def is_model_uri(text: str) -> bool:
    return text.startswith(("models:/", "runs:/"))


def check_model_uri(uri: str) -> None:
    """The URI's form, checked without MLflow: one line saying what a valid one looks like."""
    if not (_MODEL_URI.match(uri) or _RUN_URI.match(uri) or _LOGGED_MODEL_ID.match(uri)):
        raise ConfigError(f"model URI '{uri}' is not one MLflow serves: use models:/NAME/VERSION, "
                          "models:/NAME@ALIAS, models:/NAME/latest or runs:/RUN_ID/PATH")


@dataclass(frozen=True)
class MlflowModel:
    """Where a model from MLflow came from, and how it is run."""

    uri: str
    flavor: Literal["transformers", "pyfunc"]
    folder: str  # what the task loads: the merged transformers folder, or the pyfunc model's folder
    registered_name: str | None = None
    version: str | None = None
    logged_model_id: str | None = None
    source_run_id: str | None = None

    def tags(self) -> dict[str, str]:
        tags = {"tracker.model.uri": self.uri, "tracker.model.flavor": self.flavor}
        for key, value in (("registered_name", self.registered_name), ("version", self.version),
                           ("logged_model_id", self.logged_model_id), ("source_run_id", self.source_run_id)):
            if value:
                tags[f"tracker.model.{key}"] = value
        return tags


def resolve_model_uri(uri: str) -> MlflowModel:
    """Find the model in MLflow (a URI ``check_model_uri`` accepted), fetch its files once, and say
    how it runs."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    client = MlflowClient()
    name = version = None
    match = _MODEL_URI.match(uri)
    try:
        if match and match["alias"]:
            name, version = match["name"], client.get_model_version_by_alias(match["name"], match["alias"]).version
        elif match and match["version"] == "latest":
            versions = client.search_model_versions(f"name = '{match['name']}'")
            if not versions:
                raise ModelLoadError(f"registered model '{match['name']}' has no version")
            name, version = match["name"], str(max(int(v.version) for v in versions))
        elif match:
            name, version = match["name"], match["version"]
            client.get_model_version(name, version)
        local = _fetched(f"models:/{name}/{version}" if name else uri)
    except MlflowException as err:
        raise ModelLoadError(f"MLflow has no model at '{uri}' (tracking URI {mlflow.get_tracking_uri()}): "
                             f"{str(err).splitlines()[0]}") from err
    if not (local / "MLmodel").is_file():
        raise ModelLoadError(f"'{uri}' is not an MLflow model (no MLmodel file); point at the path the "
                             "model was logged under, e.g. runs:/RUN_ID/model")
    meta = Model.load(str(local / "MLmodel"))
    common = {"uri": uri, "registered_name": name, "version": version,
              "logged_model_id": getattr(meta, "model_id", None), "source_run_id": meta.run_id}
    flavor = meta.flavors.get("transformers")
    if flavor and flavor.get("model_binary"):
        return MlflowModel(flavor="transformers", folder=str(_merged_folder(local, flavor)), **common)
    if flavor:
        raise ModelLoadError(f"'{uri}' was logged without its weights (save_pretrained=False): measure "
                             f"its source model '{flavor.get('source_model_name')}' instead")
    if "python_function" not in meta.flavors:
        raise ModelLoadError(f"'{uri}' has neither a transformers nor a python_function flavour "
                             f"({', '.join(meta.flavors)}), so it cannot be run")
    return MlflowModel(flavor="pyfunc", folder=str(local), **common)


def _fetched(uri: str) -> Path:
    """The model's files on this machine, fetched once: a version or a run's artifact never changes.
    The cache is keyed by tracking URI too, as two stores may both have a version 1 of a name."""
    import mlflow

    from tracker.loading.builtin import cache_dir

    key = hashlib.sha256(f"{mlflow.get_tracking_uri()} {uri}".encode()).hexdigest()[:16]
    folder = cache_dir() / "mlflow-models" / key
    done = folder / ".fetched"
    if done.is_file():
        return Path(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per file is noise
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder)))
    done.write_text(str(local))
    return local


def _merged_folder(local: Path, flavor: dict[str, Any]) -> Path:
    """One folder with the weights and every component (tokenizer, processor), as from_pretrained
    reads it: links to the logged files, so nothing is copied."""
    merged = local.parent / (local.name + "-merged")
    merged.mkdir(exist_ok=True)
    sources = [local / flavor["model_binary"]] + [local / "components" / c for c in flavor.get("components", [])]
    for source in sources:
        for file in source.iterdir() if source.is_dir() else ():
            link = merged / file.name
            if not link.exists():
                link.symlink_to(file.resolve())
    return merged


class PyfuncPredictor:
    """Runs an MLflow pyfunc model through its ``predict``; each output is read as the task reads
    a prompted model's text (a label, a span, a summary)."""

    def __init__(self, task: Any) -> None:
        if task.prompt_template is None:
            raise ConfigError(f"task {task.name} cannot read a pyfunc model's outputs: pyfunc models run "
                              "text-classification, question-answering and summarization")
        self.task = task

    def load_model(self, source: str, *, local_only: bool) -> Any:
        import mlflow.pyfunc

        from tracker.tasks.base import LoadedModel

        return LoadedModel(model=mlflow.pyfunc.load_model(source))

    def predict(self, loaded: Any, inputs: list[Any], settings: Any, device: Any) -> Any:
        from tracker.tasks.base import BatchOutput

        outputs = _as_list(loaded.model.predict(list(inputs)))
        if len(outputs) != len(inputs):
            raise ModelLoadError(f"the pyfunc model returned {len(outputs)} outputs for {len(inputs)} inputs")
        return BatchOutput([self.task.parse_generation(str(o)) for o in outputs])


def _as_list(outputs: Any) -> list[Any]:
    """A DataFrame (its label column, else its first), a Series, an array or a list, as a list."""
    if hasattr(outputs, "columns"):
        column = "label" if "label" in outputs.columns else outputs.columns[0]
        return list(outputs[column])
    if hasattr(outputs, "tolist"):
        return outputs.tolist()
    return list(outputs)


def tag_version(client: Any, model: MlflowModel, *, run_id: str, metrics: dict[str, float],
                quality_metric: str, task: str, dataset: str) -> None:
    """Show a registered version's latest energy and quality in the Model Registry; a failure is
    logged, never raised: the run itself is already recorded."""
    if not (model.registered_name and model.version):
        return
    tags = {f"tracker.{name}": f"{metrics[name]:.6g}" for name in VERSION_TAGS
            if name in metrics and not math.isnan(metrics[name])}
    tags |= {"tracker.quality_metric": quality_metric, "tracker.task": task, "tracker.dataset": dataset,
             "tracker.run_id": run_id}
    try:
        for key, value in tags.items():
            client.set_model_version_tag(model.registered_name, model.version, key, value)
    except Exception as err:  # noqa: BLE001 - the registry may refuse (permissions); the run stands
        logger.warning("could not tag %s version %s with its energy: %s", model.registered_name, model.version, err)
