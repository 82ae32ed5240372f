"""The report pages as a person sees them: the Airflow api-server with the report plugin,
SimpleAuthManager users, corpus_build runs, three nightly runs, and headless Chromium
signing in through Airflow's login form.

Per-DAG access is the auth manager's: with multi-team on, the DAG bundle belongs to team
``data``; ``analyst`` is a viewer in that team, ``outsider`` a viewer in another team.

The DAG runs are real runs in Airflow's database, triggered through its REST API; their data
is written by ``tamis build``, the command the run's tasks call one stage at a time,
while Airflow sets up. The first run is then marked successful through Airflow's REST
API; the second stops in ``normalize`` before its manifest was written. The nightly runs
are ``tamis nightly run`` over the sample's three days, the command nightly_ingest's tasks
call step by step; the third day re-crawls documents of the first, a spike of duplicates
that the drift check flags.

``scripts/screenshots.py`` serves the same site to take the pictures in docs/.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import websocket

from conftest import REPO, airflow_env
from tamis.dataset import Dataset
from tamis.pipeline import load_pipeline, safe_run_id

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
RUN_ID = "manual__2026-11-22T09:00:00+00:00"
STOPPED_RUN_ID = "manual__2026-11-22T10:00:00+00:00"
NIGHTS = ["2026-11-20", "2026-11-21", "2026-11-22"]
USERS = {
    "analyst": ("viewer:data", "analyst-pw"),
    "outsider": ("viewer:other", "outsider-pw"),
    "operator": ("user:data", "operator-pw"),
}


def night_run(day: str) -> str:
    return f"nightly_{day}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _airflow(env: dict, *args: str) -> None:
    result = subprocess.run([str(BIN / "airflow"), *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"airflow {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@contextlib.contextmanager
def serve(root: Path):
    """The data, Airflow's database and the api-server with its users; yields where they are."""
    home, data = root / "home", root / "data"
    home.mkdir()
    passwords = root / "passwords.json"
    passwords.write_text(json.dumps({name: pw for name, (_, pw) in USERS.items()}))
    port = _free_port()
    env = {
        **os.environ,
        **airflow_env(home, data),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW__CORE__MULTI_TEAM": "True",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{n}:{r}" for n, (r, _) in USERS.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(
            [
                {
                    "name": "tamis",
                    "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                    "kwargs": {"path": str(REPO / "dags")},
                    "team_name": "data",
                }
            ]
        ),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    }
    # The data and Airflow's database are prepared side by side: neither needs the other.
    build = subprocess.Popen(
        [str(BIN / "tamis"), "build", "--run-id", RUN_ID, "--workers", "1"],
        env=env,
        stdout=(root / "build.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    nights = subprocess.Popen(
        [
            "bash",
            "-c",
            " && ".join(
                f"{BIN / 'tamis'} nightly run --run-id {night_run(day)} --date {day} --workers 1" for day in NIGHTS
            ),
        ],
        env=env,
        stdout=(root / "nightly.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    _airflow(env, "db", "migrate")
    _airflow(env, "teams", "create", "data")  # the auth manager refuses to start with users of unknown teams
    _airflow(env, "teams", "create", "other")
    server = subprocess.Popen(
        [str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=(root / "api-server.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _airflow(env, "dags", "reserialize")
        for process, log in ((build, "build.log"), (nights, "nightly.log")):
            assert process.wait(timeout=900) == 0, (root / log).read_text()[-3000:]
        os.environ["TAMIS_DATA_ROOT"] = str(data)
        try:
            pipeline = load_pipeline("default")
        finally:
            del os.environ["TAMIS_DATA_ROOT"]
        # The second run stopped while normalize was writing: ingest finished, normalize
        # committed its shards but has no manifest, the later stages never started.
        stopped = data / "runs" / safe_run_id(STOPPED_RUN_ID)
        stopped.mkdir(parents=True)
        for stage in pipeline.stage_names[:2]:
            shutil.copytree(data / "runs" / safe_run_id(RUN_ID) / stage, stopped / stage)
        (stopped / pipeline.stage_names[1] / "_manifest.json").unlink()

        base = f"http://127.0.0.1:{port}"
        _wait_for(f"{base}/api/v2/monitor/health", server, root / "api-server.log")
        tokens = {name: _token(base, name, pw) for name, (_, pw) in USERS.items()}
        runs = f"{base}/api/v2/dags/corpus_build/dagRuns"
        for run_id in (RUN_ID, STOPPED_RUN_ID):
            status, answer = _request(
                runs, tokens["operator"], method="POST", body={"dag_run_id": run_id, "logical_date": None}
            )
            assert status == 200, answer
        status, answer = _request(
            f"{runs}/{urllib.parse.quote(RUN_ID, safe='')}",
            tokens["operator"],
            method="PATCH",
            body={"state": "success"},
        )
        assert status == 200, answer
        yield {"base": base, "pipeline": pipeline, "tokens": tokens, "log": root / "api-server.log"}
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server and its workers: the group this test started
            server.wait(30)
        for process in (build, nights):
            if process.poll() is None:
                process.kill()
                process.wait(30)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("ui")) as served:
        yield served


def _wait_for(url: str, server: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    end = time.time() + timeout
    while time.time() < end:
        assert server.poll() is None, f"the api-server exited:\n{log.read_text()[-3000:]}"
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout}s:\n{log.read_text()[-3000:]}")


def _token(base: str, username: str, password: str) -> str:
    return _request(f"{base}/auth/token", None, method="POST", body={"username": username, "password": password})[1][
        "access_token"
    ]


def _request(url: str, token: str | None, method: str = "GET", body: dict | None = None, cookie: bool = False):
    """(status, JSON or text) of one request, with the token as bearer header or as the UI's cookie."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Cookie" if cookie else "Authorization"] = f"_token={token}" if cookie else f"Bearer {token}"
    request = urllib.request.Request(
        url, method=method, headers=headers, data=json.dumps(body).encode() if body is not None else None
    )
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=60) as response:
            status, raw, location = response.status, response.read().decode(), response.headers.get("location")
    except urllib.error.HTTPError as exc:
        status, raw, location = exc.code, exc.read().decode(), exc.headers.get("location")
    if location:
        return status, location
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Chromium:
    """Headless Chromium driven over the DevTools protocol."""

    def __init__(self, width: int = 1200, height: int = 800):
        self.profile = tempfile.mkdtemp(prefix="tamis-chromium-")
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                f"--user-data-dir={self.profile}",
                "--remote-debugging-port=0",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = Path(self.profile) / "DevToolsActivePort"
        end = time.time() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert time.time() < end and self.process.poll() is None, "Chromium did not start"
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.ids = itertools.count(1)
        self.call("Page.enable")
        self.resize(width, height)

    def call(self, method: str, **params):
        message_id = next(self.ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def resize(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, condition: str, timeout: float = 30) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if self.js(f"!!({condition})"):
                return
            time.sleep(0.1)
        raise TimeoutError(f"{condition!r} at {self.js('location.href')}: {self.js('document.body.innerText')[:1500]}")

    def open(self, url: str, ready: str = "document.readyState === 'complete'") -> None:
        self.call("Page.navigate", url=url)
        time.sleep(0.2)
        self.wait(ready)

    def type(self, selector: str, text: str) -> None:
        self.js(f"document.querySelector({json.dumps(selector)}).focus()")
        self.call("Input.insertText", text=text)

    def sign_in(self, base: str, page: str, username: str) -> None:
        """Open ``page``, land on Airflow's login form, sign in and come back."""
        self.call("Network.clearBrowserCookies")
        self.open(base + page, "document.querySelector('input[name=password]')")
        self.type("input[name=username]", username)
        self.type("input[name=password]", USERS[username][1])
        self.wait("!document.querySelector('button[type=submit]').disabled")
        self.js("document.querySelector('button[type=submit]').click()")
        self.wait(f"location.pathname === {json.dumps(page)} && document.readyState === 'complete'")

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        self.ws.close()
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(site):
    chromium = Chromium()
    chromium.sign_in(site["base"], "/tamis/", "analyst")
    yield chromium
    chromium.close()


def run_href(run_id: str) -> str:
    return f"/tamis/dags/corpus_build/runs/{urllib.parse.quote(run_id, safe='')}"


def test_pages_need_a_signed_in_user(site):
    status, location = _request(site["base"] + "/tamis/", None)
    assert status == 303 and location.startswith("/auth/login?next=")


def test_pages_forbid_scripts_and_foreign_content_yet_keep_their_style(site, browser):
    url = site["base"] + run_href(RUN_ID)
    request = urllib.request.Request(url, headers={"Cookie": f"_token={site['tokens']['analyst']}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        headers = response.headers
    policy = dict(part.strip().split(" ", 1) for part in headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'none'" and "script-src" not in policy and policy["frame-ancestors"] == "'self'"
    assert headers["X-Content-Type-Options"] == "nosniff"
    browser.open(url)
    # Chromium enforces the policy: the page's own style sheet still applies.
    assert "system-ui" in browser.js("getComputedStyle(document.body).fontFamily")
    # Markup that slipped into a page runs nothing.
    browser.js("document.body.insertAdjacentHTML('beforeend', '<img src=x onerror=\"document.title=1\">')")
    time.sleep(0.5)
    assert browser.js("document.title") != "1"


def test_runs_page_lists_both_runs_with_their_state(site, browser):
    browser.open(site["base"] + "/tamis/")
    rows = browser.js(
        "Array.from(document.querySelectorAll('#runs tbody tr')).map(r => [r.dataset.run, r.children[2].textContent])"
    )
    assert dict(rows) == {RUN_ID: "success", STOPPED_RUN_ID: "queued"}
    browser.open(site["base"] + "/plugin/tamis_reports")  # the nav entry: the page inside the Airflow UI
    browser.wait(
        "document.querySelector('iframe') && document.querySelector('iframe').contentDocument"
        " && document.querySelector('iframe').contentDocument.querySelector('#runs')"
    )


def test_run_report_funnel_equals_the_manifests(site, browser):
    pipeline = site["pipeline"]
    browser.open(site["base"] + run_href(RUN_ID))
    shown = browser.js("""Object.fromEntries(Array.from(document.querySelectorAll('#funnel tbody tr')).map(r =>
        [r.dataset.stage, Object.fromEntries(Array.from(r.querySelectorAll('td[data-count]')).map(
            c => [c.dataset.count, Number(c.textContent.replaceAll(',', ''))]))]))""")
    assert list(shown) == pipeline.stage_names
    for stage in pipeline.stage_names:
        assert shown[stage] == Dataset(pipeline.stage_url(RUN_ID, stage)).manifest()["counts"], stage
    bars = browser.js("document.querySelectorAll('svg.funnel rect').length")
    assert bars >= len(pipeline.stage_names)
    histogram = browser.js("Array.from(document.querySelectorAll('#lengths svg rect title')).map(t => t.textContent)")
    final = Dataset(document_stage_url(pipeline)).manifest()["counts"]["kept"]
    assert sum(int(t.rsplit(": ", 1)[1].replace(",", "")) for t in histogram) == final
    gates = browser.js(
        "Object.fromEntries(Array.from(document.querySelectorAll('#gates details.gate')).map(d => [d.dataset.stage, d.dataset.success]))"
    )
    assert gates == {
        s: str(Dataset(pipeline.stage_url(RUN_ID, s)).gate_result()["success"]).lower() for s in pipeline.stage_names
    }


def test_run_report_is_a_tab_of_the_dag_run_in_the_airflow_ui(site, browser):
    browser.open(f"{site['base']}/dags/corpus_build/runs/{RUN_ID}/plugin/tamis_run_report")
    frame = "document.querySelector('iframe') && document.querySelector('iframe').contentDocument"
    browser.wait(f"{frame} && {frame}.querySelector('#funnel')")
    assert browser.js(f"{frame}.querySelector('h1').textContent") == f"corpus_build / {RUN_ID}"


def document_stage_url(pipeline) -> str:
    """The last stage whose records are documents with text (pack turns them into sequences)."""
    from tamis.report import dataset_columns

    urls = [pipeline.stage_url(RUN_ID, stage) for stage in pipeline.stage_names]
    return next(url for url in reversed(urls) if "text" in dataset_columns(url))


def test_record_browser_finds_a_record_by_id(site, browser):
    pipeline = site["pipeline"]
    wanted = Dataset(document_stage_url(pipeline)).read(columns=["id", "source"]).slice(3, 1).to_pylist()[0]
    query = urllib.parse.urlencode({"id": wanted["id"]})
    browser.open(f"{site['base']}{run_href(RUN_ID)}/records?{query}")
    assert browser.js("Array.from(document.querySelectorAll('#records td.id')).map(c => c.textContent)") == [
        wanted["id"]
    ]
    browser.open(f"{site['base']}{run_href(RUN_ID)}/records?source=web")
    sources = browser.js("Array.from(document.querySelectorAll('#records td.source')).map(c => c.textContent)")
    assert sources and set(sources) == {"web"}
    assert "through the index" in browser.js("document.querySelector('.meta').textContent")
    stage = pipeline.stage_names[3]  # a filter that drops documents
    browser.open(f"{site['base']}{run_href(RUN_ID)}/records?stage={stage}&status=dropped")
    shown = browser.js(
        "Array.from(document.querySelectorAll('#records tbody tr')).map(r => [r.querySelector('td.id').textContent, r.querySelector('td.reason').textContent])"
    )
    dropped = {
        r["id"]: r["reason"] for r in Dataset(pipeline.stage_url(RUN_ID, stage)).read_side("dropped").to_pylist()
    }
    assert shown and all(dropped[i] == reason for i, reason in shown)


def test_stopped_run_shows_which_stages_finished(site, browser):
    names = site["pipeline"].stage_names
    browser.open(site["base"] + run_href(STOPPED_RUN_ID))
    status = browser.js(
        "Object.fromEntries(Array.from(document.querySelectorAll('#funnel tbody tr')).map(r => [r.dataset.stage, r.dataset.status]))"
    )
    assert status == {names[0]: "done", names[1]: "incomplete", **{n: "not run" for n in names[2:]}}
    assert "no _manifest.json yet" in browser.js("document.querySelector('#funnel').innerText")


def test_unknown_run_is_a_clear_404(site, browser):
    status, body = _request(
        site["base"] + run_href("manual__1999-01-01T00:00:00+00:00"), site["tokens"]["analyst"], cookie=True
    )
    assert status == 404 and "has no run" in body and "Traceback" not in body
    browser.open(site["base"] + run_href("manual__1999-01-01T00:00:00+00:00"))
    assert "has no run" in browser.js("document.querySelector('.error').textContent")


def test_user_without_access_to_the_dag_sees_no_report(site):
    token = site["tokens"]["outsider"]
    status, body = _request(site["base"] + "/tamis/", token, cookie=True)
    assert status == 200 and RUN_ID not in body and "do not have access" in body
    status, body = _request(site["base"] + run_href(RUN_ID), token)
    assert status == 403 and "Funnel" not in body


# --------------------------------------------------------------------------- trends, examples, comparison


def trends_href() -> str:
    return "/tamis/pipelines/default/trends"


def night_manifests(pipeline, day: str) -> dict[str, dict]:
    return {s: Dataset(pipeline.stage_url(night_run(day), s)).manifest() for s in pipeline.corpus_stages}


def biggest_jump(pipeline) -> tuple[str, str, float]:
    """(stage, rule, change) of the drop rate of the last night furthest from the mean of the nights before."""
    rates = []
    for day in NIGHTS:
        rates.append(
            {
                (stage, rule): count / m["counts"]["in"]
                for stage, m in night_manifests(pipeline, day).items()
                for rule, count in m["drop_reasons"].items()
            }
        )
    jumps = {
        key: rates[-1].get(key, 0.0) - sum(r.get(key, 0.0) for r in rates[:-1]) / (len(rates) - 1)
        for key in set().union(*rates)
    }
    (stage, rule), change = max(jumps.items(), key=lambda kv: abs(kv[1]))
    return stage, rule, change


def test_walk_from_a_spike_on_the_trends_page_to_the_documents_behind_it(site, browser):
    pipeline = site["pipeline"]
    stage, rule, change = biggest_jump(pipeline)
    assert change > pipeline.reports.drift.tolerance  # the third night's spike
    browser.open(site["base"] + trends_href())
    assert browser.js("document.querySelector('#drift-status').dataset.status") == "breach"
    flagged = browser.js(
        "Array.from(document.querySelectorAll('#drift tr.breach')).map(r => [r.dataset.run, r.dataset.series])"
    )
    assert [night_run(NIGHTS[-1]), f"drop_rate/{stage}/{rule}"] in flagged
    # The spike is the red point of the rule's line; a person clicks it.
    point = f"document.querySelector('#rules-{stage} circle.breach[data-series={json.dumps(rule)}]')"
    assert browser.js(f"{point}.dataset.run") == NIGHTS[-1]
    browser.js(f"{point}.dispatchEvent(new MouseEvent('click', {{bubbles: true}}))")
    browser.wait("location.pathname.endsWith('/examples') && document.querySelector('#examples-title')")
    shown = browser.js("Array.from(document.querySelectorAll('.example')).map(e => e.dataset.id)")
    dropped = Dataset(pipeline.stage_url(night_run(NIGHTS[-1]), stage)).read_side("dropped").to_pylist()
    assert sorted(shown) == sorted(r["id"] for r in dropped if r["reason"] == rule)[: len(shown)] and shown
    texts = browser.js("Array.from(document.querySelectorAll('.example .doc')).map(e => e.textContent)")
    assert all(t and t != "(text not shown)" for t in texts)
    # ... and opens the first document.
    browser.js("document.querySelector('.example a.document').click()")
    browser.wait("document.querySelector('#journey')")
    assert browser.js("document.querySelector('#document-id').textContent") == shown[0]
    steps = browser.js(
        "Array.from(document.querySelectorAll('#journey tbody tr')).map(r => [r.dataset.stage, r.dataset.status])"
    )
    names = pipeline.corpus_stages
    assert steps == [[s, "kept"] for s in names[: names.index(stage)]] + [[stage, "dropped"]]
    assert browser.js("document.querySelector('#journey tr[data-status=dropped] .reason').textContent") == rule


def test_compare_two_nights_counts_and_parameters_side_by_side(site, browser):
    pipeline = site["pipeline"]
    a, b = night_run(NIGHTS[1]), night_run(NIGHTS[2])
    browser.open(site["base"] + trends_href())
    browser.js(f"""(() => {{ const f = document.querySelector('#compare-form');
        f.querySelector('select[name=a]').value = {json.dumps(a)}; f.querySelector('select[name=b]').value = {json.dumps(b)};
        f.querySelector('button').click(); }})()""")
    browser.wait("document.querySelector('#compare-counts')")
    cells = browser.js("""Array.from(document.querySelectorAll('#compare-counts tbody tr')).map(r => [r.dataset.stage,
        r.dataset.name, r.dataset.kind, r.querySelector('[data-side=a]').dataset.value,
        r.querySelector('[data-side=b]').dataset.value, r.querySelector('.diff').dataset.diff])""")
    shown = {(s, n, k): (int(x), int(y), int(d)) for s, n, k, x, y, d in cells}
    ma, mb = night_manifests(pipeline, NIGHTS[1]), night_manifests(pipeline, NIGHTS[2])
    for stage in pipeline.corpus_stages:
        for key in ("in", "kept", "dropped", "quarantined"):
            x, y = ma[stage]["counts"][key], mb[stage]["counts"][key]
            assert shown[(stage, key, "count")] == (x, y, y - x), (stage, key)
        for rule in set(ma[stage]["drop_reasons"]) | set(mb[stage]["drop_reasons"]):
            x, y = ma[stage]["drop_reasons"].get(rule, 0), mb[stage]["drop_reasons"].get(rule, 0)
            assert shown[(stage, rule, "dropped")] == (x, y, y - x), (stage, rule)
    params = browser.js(
        "Array.from(document.querySelectorAll('#compare-params tbody tr')).map(r => [r.dataset.stage, r.dataset.param])"
    )
    expected = sorted(
        [s, k] for s in pipeline.corpus_stages for k in ma[s]["params"] if ma[s]["params"][k] != mb[s]["params"][k]
    )
    assert sorted(params) == expected and ["ingest", "date"] in expected  # each night reads its own day


def test_run_report_counts_link_to_the_documents_behind_them(site, browser):
    browser.open(site["base"] + run_href(RUN_ID))
    link = browser.js("document.querySelector('#reasons tbody tr a').getAttribute('href')")
    row = browser.js(
        "[document.querySelector('#reasons tbody tr').dataset.stage, document.querySelector('#reasons tbody tr').dataset.rule]"
    )
    browser.open(site["base"] + link)
    assert (
        browser.js("document.querySelector('#examples-title').textContent")
        == f"{row[0]}: documents dropped by {row[1]}"
    )
    total = Dataset(site["pipeline"].stage_url(RUN_ID, row[0])).manifest()["drop_reasons"][row[1]]
    assert browser.js("document.querySelectorAll('.example').length") == min(total, 20)


def test_a_user_without_access_gets_no_trends(site):
    status, body = _request(site["base"] + trends_href(), site["tokens"]["outsider"], cookie=True)
    assert status == 403 and "Drift" not in body
    status, body = _request(
        site["base"] + f"/tamis/pipelines/default/runs/{night_run(NIGHTS[0])}/documents?id=x",
        site["tokens"]["outsider"],
        cookie=True,
    )
    assert status == 403
