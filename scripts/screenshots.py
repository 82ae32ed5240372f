"""Take the screenshots of the report pages in docs/.

    .venv/bin/python scripts/screenshots.py [--out docs]

It serves the same site as the browser test (tests/test_ui.py): the api-server with the
report plugin over a corpus_build run and three nightly runs of the bundled sample, then
signs in as a viewer in headless Chromium and saves one PNG per page.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "include")]

from test_ui import NIGHTS, RUN_ID, Chromium, night_run, run_href, serve  # noqa: E402

from tamis.dataset import Dataset  # noqa: E402
from tamis.pipeline import safe_run_id  # noqa: E402


def shoot(
    browser: Chromium, url: str, path: Path, ready: str = "document.readyState === 'complete'", tall: bool = True
) -> None:
    browser.resize(1200, 800)
    browser.open(url, ready)
    if tall:
        browser.resize(1200, min(browser.js("document.documentElement.scrollHeight"), 2400))
    browser.screenshot(path)
    print(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs"), help="folder of the PNG files (default: docs/)")
    out = Path(parser.parse_args().out)
    with tempfile.TemporaryDirectory(prefix="tamis-screenshots-") as root, serve(Path(root)) as site:
        base = site["base"]
        pipeline = site["pipeline"]
        browser = Chromium()
        try:
            browser.sign_in(base, "/tamis/", "analyst")
            frame = "document.querySelector('iframe') && document.querySelector('iframe').contentDocument"
            shoot(
                browser,
                f"{base}/plugin/tamis_reports",
                out / "report_runs.png",
                f"{frame} && {frame}.querySelector('#runs')",
                tall=False,
            )
            shoot(browser, base + run_href(RUN_ID), out / "report_run.png")
            shoot(
                browser,
                f"{base}/dags/corpus_build/runs/{RUN_ID}/plugin/tamis_run_report",
                out / "report_in_dag_run.png",
                f"{frame} && {frame}.querySelector('#funnel')",
                tall=False,
            )
            shoot(browser, f"{base}{run_href(RUN_ID)}/records?source=web", out / "report_records.png")
            shoot(browser, f"{base}/tamis/pipelines/default/trends", out / "report_trends.png")
            last = night_run(NIGHTS[-1])
            browser.open(f"{base}/tamis/pipelines/default/trends")
            examples = browser.js("document.querySelector('#drift tr.breach a.examples').getAttribute('href')")
            shoot(browser, base + examples, out / "report_examples.png")
            document = browser.js("document.querySelector('.example a.document').getAttribute('href')")
            shoot(browser, base + document, out / "report_document.png")
            query = urllib.parse.urlencode({"a": night_run(NIGHTS[1]), "b": last})
            shoot(browser, f"{base}/tamis/pipelines/default/compare?{query}", out / "report_compare.png")
            masking = next(
                s
                for s in pipeline.stage_names
                if any(k.startswith("pii.") for k in Dataset(pipeline.stage_url(RUN_ID, s)).manifest()["metrics"])
            )
            shoot(
                browser,
                f"{base}/tamis/pipelines/default/runs/{safe_run_id(RUN_ID)}/examples?stage={masking}&kind=changed",
                out / "report_before_after.png",
            )
            browser.open(base + run_href(RUN_ID))
            cluster = browser.js(
                "(document.querySelector('a.cluster-link') || {getAttribute: () => null}).getAttribute('href')"
            )
            if cluster:
                shoot(browser, base + cluster, out / "report_cluster.png")
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
