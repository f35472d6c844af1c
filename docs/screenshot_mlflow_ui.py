"""Screenshots of MLflow's run comparison, taken in a real browser, for the README.

Needs a running tracking server, Debian's chromium (apt-get install chromium) and playwright
(pip install playwright; it drives the system browser, nothing is downloaded):

    mlflow server --host 127.0.0.1 --port 5055 --backend-store-uri sqlite:///mlflow.db
    python docs/screenshot_mlflow_ui.py --url http://127.0.0.1:5055 --experiment sentence-similarity

It opens the comparison of every FINISHED run of the experiment, sets the parallel coordinates to
batch_size, precision, energy_kwh_per_1k and quality, and the scatter plot to energy_kwh_per_1k
against quality, and saves both views.
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from pathlib import Path

CLIP = {"x": 190, "y": 0, "width": 1210, "height": 640}  # the title and the plot, without the sidebar


def finished_runs(url: str, experiment: str) -> tuple[str, list[str]]:
    def post(path: str, body: dict) -> dict:
        request = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        return json.load(urllib.request.urlopen(request))

    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name={experiment}") as r:
        experiment_id = json.load(r)["experiment"]["experiment_id"]
    runs = post("runs/search", {"experiment_ids": [experiment_id], "max_results": 100,
                                "filter": "attributes.status = 'FINISHED'"})["runs"]
    return experiment_id, [run["info"]["run_id"] for run in runs]


def choose(page, select, values: list[str]) -> None:
    """Pick values in one of the UI's select boxes by typing them, as a person would."""
    select.click()
    for value in values:
        page.keyboard.type(value)
        page.wait_for_timeout(400)
        page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    page.wait_for_timeout(1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:5055")
    parser.add_argument("--experiment", default="sentence-similarity")
    parser.add_argument("--browser", default="/usr/bin/chromium")
    parser.add_argument("--output", default=str(Path(__file__).parent))
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    experiment_id, runs = finished_runs(args.url, args.experiment)
    page_url = f"{args.url}/#/compare-runs?runs={json.dumps(runs)}&experiments={json.dumps([experiment_id])}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.browser, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(page_url)
        page.get_by_text("Comparing").wait_for()
        page.wait_for_timeout(2000)
        assistant = page.get_by_role("button", name="Close")
        if assistant.count():
            assistant.first.click()

        metrics = page.locator(".du-bois-light-select").nth(1)
        while metrics.locator(".du-bois-light-select-selection-item-remove").count():
            metrics.locator(".du-bois-light-select-selection-item-remove").first.click()
        choose(page, metrics, ["energy_kwh_per_1k", "quality"])
        page.screenshot(path=f"{args.output}/mlflow-compare-parallel.png", clip=CLIP)

        page.get_by_text("Scatter Plot", exact=True).click()
        page.wait_for_timeout(1000)
        for axis, value in (("#x-axis-selector", "energy_kwh_per_1k"), ("#y-axis-selector", "quality")):
            page.locator(axis).click()
            page.get_by_role("option", name=value, exact=True).click()
            page.wait_for_timeout(1000)
        page.screenshot(path=f"{args.output}/mlflow-compare-scatter.png", clip=CLIP)
        browser.close()
    print(f"{len(runs)} runs compared; screenshots in {args.output}")


if __name__ == "__main__":
    main()
