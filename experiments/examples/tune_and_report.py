"""Search batch size and precision, then report, from Python.

    python experiments/examples/tune_and_report.py

The same as `tracker tune --task text-classification ...` then `tracker report`, on the built-in
tiny classifier so that it takes a minute or two; results come back as dataclasses.
"""

from __future__ import annotations

import tracker


def main() -> None:
    search = tracker.tune(task="text-classification", n_samples=32, n_trials=3, max_batch_size=8,
                          precisions=["fp32", "int8"], storage="sqlite:///example-optuna.db",
                          study_name="example-search")
    if search.best_params is None:
        print(f"study {search.study}: no feasible trial in {search.trials}")
    else:
        low, high = search.carbon_reduction_x_ci95
        print(f"study {search.study}: best {search.best_params}, carbon_reduction_x "
              f"{search.carbon_reduction_x:.2f} (95% interval {low:.2f} to {high:.2f})" + (f"; TIE: {search.tie}" if search.tie else ""))
    report = tracker.report(output="example-report", experiments=["text-classification"], include_tuning=True)
    print(f"report run {report.run_id}: {len(report.models)} model rows in {report.output}/report.html")


if __name__ == "__main__":
    main()
