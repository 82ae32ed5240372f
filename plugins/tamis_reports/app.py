"""The report pages: a FastAPI app that the Airflow api-server mounts under ``/tamis``.

Who may see what is the auth manager's decision, the same as for Airflow's own pages:
the user comes from the api-server's JWT (the ``_token`` cookie the Airflow UI sets, or
an ``Authorization: Bearer`` header), and a run's report needs read access to the runs
of its DAG. Pages are sync functions, so FastAPI runs their file and database reads in
its thread pool.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from functools import lru_cache
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from tamis import report, storage
from tamis.dataset import Dataset
from tamis.pipeline import ConfigError, load_pipeline, safe_run_id
from tamis_reports import charts

URL_PREFIX = "/tamis"
# The DAGs whose runs have report pages; ``pipeline`` in a run's conf names its config (else "default").
REPORTED_DAGS = ("corpus_build", "nightly_ingest")
RUNS_SHOWN = 100
TEXT_CHARS = 400  # of each record in the browser
RECORDS_PER_PAGE = 25
HISTOGRAM_ROWS = 500_000  # a page reads at most this many values per histogram

app = FastAPI(title="tamis data-quality reports", docs_url=None, redoc_url=None, openapi_url=None)
_bearer = HTTPBearer(auto_error=False)


@app.middleware("http")
async def _security_headers(request: Request, call_next):
    """The pages run no script and load nothing from elsewhere; the policy says so, so that
    text from a corpus that slipped past escaping could still do nothing."""
    response = await call_next(request)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


class LoginRequired(Exception):
    pass


@app.exception_handler(LoginRequired)
async def _to_login(request: Request, exc: LoginRequired):
    from airflow.api_fastapi.app import get_auth_manager

    return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)


@app.exception_handler(StarletteHTTPException)  # also unknown paths, which Starlette raises
async def _error_page(request: Request, exc: StarletteHTTPException):
    body = f'<p class="error">{escape(str(exc.detail))}</p><p><a href="{URL_PREFIX}/">All runs</a></p>'
    return HTMLResponse(_page(f"{exc.status_code}", body), status_code=exc.status_code)


@app.exception_handler(Exception)
async def _failure_page(request: Request, exc: Exception):
    # The details go to the api-server log; the reader gets what failed, not a stack trace.
    logging.getLogger(__name__).exception("report page %s failed", request.url.path)
    body = (
        f'<p class="error">The report could not be built: {escape(type(exc).__name__)}: {escape(str(exc)[:500])}</p>'
        f'<p><a href="{URL_PREFIX}/">All runs</a></p>'
    )
    return HTMLResponse(_page("500", body), status_code=500)


# --------------------------------------------------------------------------- auth


async def _user(request: Request):
    """The signed-in user, by Airflow's own rules (bearer header first, then the UI's cookie)."""
    from airflow.api_fastapi.core_api.security import get_user

    credentials = await _bearer(request)
    try:
        return await get_user(request, None, credentials)
    except HTTPException as exc:
        if exc.status_code in (401, 403):
            raise LoginRequired() from exc
        raise


def _can_read_runs(user, dag_id: str) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.models.dag import DagModel

    return get_auth_manager().is_authorized_dag(
        method="GET",
        access_entity=DagAccessEntity.RUN,
        details=DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id)),
        user=user,
    )


def _readable_dags(user) -> list[str]:
    from airflow.api_fastapi.app import get_auth_manager

    allowed = get_auth_manager().get_authorized_dag_ids(user=user, method="GET")
    return [d for d in REPORTED_DAGS if d in allowed and _can_read_runs(user, d)]


def _dag_run(dag_id: str, run_id: str) -> dict[str, Any] | None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        return _run_row(run) if run is not None else None


def _dag_runs(dag_ids: list[str]) -> list[dict[str, Any]]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    if not dag_ids:
        return []
    with create_session() as session:
        runs = session.scalars(
            select(DagRun).where(DagRun.dag_id.in_(dag_ids)).order_by(DagRun.run_after.desc()).limit(RUNS_SHOWN)
        ).all()
        return [_run_row(r) for r in runs]


def _run_row(run) -> dict[str, Any]:
    return {
        "dag_id": run.dag_id,
        "run_id": run.run_id,
        "state": str(run.state.value if hasattr(run.state, "value") else run.state),
        # A queued run has not started yet; it is dated by when it may run.
        "date": (run.start_date or run.run_after).isoformat(timespec="seconds")
        if (run.start_date or run.run_after)
        else "",
        "pipeline": str((run.conf or {}).get("pipeline") or "default"),
    }


def _run_location(run: dict[str, Any]):
    """The stages of a run and its folder, or an explanation of why there are none.

    Both DAGs write each stage of a run to ``<storage_root>/runs/<run id>/<stage>``; a
    nightly run goes through the pipeline's corpus stages only.
    """
    try:
        pipeline = load_pipeline(run["pipeline"])
        stages = list(pipeline.corpus_stages) if run["dag_id"] == "nightly_ingest" else pipeline.stage_names
    except ConfigError as exc:
        return None, None, f"the run's pipeline config cannot be loaded: {exc}"
    return stages, pipeline.run_url(run["run_id"]), None


# --------------------------------------------------------------------------- pages


@app.get("/", response_class=HTMLResponse)
def runs_page(request: Request, user=Depends(_user)):
    dags = _readable_dags(user)
    rows = []
    for run in _dag_runs(dags):
        stages, run_url, problem = _run_location(run)
        if problem:
            progress, kept = escape(problem), ""
        else:
            statuses = [report.stage_status(storage.join(run_url, s))["status"] for s in stages]
            done = statuses.count("done")
            progress = f"{done} / {len(statuses)} stages"
            last = [s for s, st in zip(stages, statuses) if st == "done"]
            kept = charts.number(Dataset(storage.join(run_url, last[-1])).manifest()["counts"]["kept"]) if last else ""
        rows.append(
            f'<tr data-dag="{escape(run["dag_id"])}" data-run="{escape(run["run_id"])}">'
            f'<td>{escape(run["dag_id"])}</td><td><a href="{_run_href(run["dag_id"], run["run_id"])}">{escape(run["run_id"])}</a></td>'
            f'<td class="state {escape(run["state"])}">{escape(run["state"])}</td><td>{escape(run["date"])}</td>'
            f'<td>{escape(run["pipeline"])}</td><td>{progress}</td><td class="num">{kept}</td></tr>'
        )
    if not dags:
        body = '<p class="message">You do not have access to the runs of any reported DAG.</p>'
    elif not rows:
        body = f'<p class="message">No runs yet of {", ".join(dags)}.</p>'
    else:
        body = (
            '<table id="runs"><thead><tr><th>DAG</th><th>run</th><th>state</th><th>date</th><th>pipeline</th>'
            "<th>progress</th><th>documents out</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        )
    if dags:
        from tamis.pipeline import PIPELINES_DIR

        trends = " · ".join(
            f'<a class="trends" href="{URL_PREFIX}/pipelines/{quote(p.stem, safe="")}/trends">{escape(p.stem)}</a>'
            for p in sorted(PIPELINES_DIR.glob("*.yaml"))
        )
        body = f'<p class="meta">Trends and drift across runs, by pipeline: {trends}</p>{body}'
    return _page("Runs", f"<h1>Data-quality reports</h1>{body}")


@app.get("/dags/{dag_id}/runs/{run_id}", response_class=HTMLResponse)
def run_page(dag_id: str, run_id: str, user=Depends(_user)):
    run, stages, run_url = _resolve(dag_id, run_id, user)
    title = f"{dag_id} / {run_id}"
    head = (
        f'<h1>{escape(title)}</h1><p class="meta">state <b>{escape(run["state"])}</b> · pipeline '
        f"<b>{escape(run['pipeline'])}</b> · data <code>{escape(run_url)}</code></p>"
    )
    if not report.run_exists(run_url):
        return _page(
            title,
            head + '<p class="message" id="no-data">This run has not written any dataset yet '
            f"(no folder at <code>{escape(run_url)}</code>).</p>",
            crumbs=True,
        )
    data = report.run_report(run_url, stages)
    links = RunLinks(run["pipeline"], safe_run_id(run_id))
    sections = [
        head,
        _run_facts(run_url, links),
        _stage_table(data, links),
        _funnel_section(data),
        _reasons_section(data, links),
        _distributions(data),
        _clusters_section(data, links),
        _pii_section(data, links),
        _gates_section(data),
        f'<p><a id="browse" href="{_run_href(dag_id, run_id)}/records">Browse records</a></p>',
    ]
    return _page(title, "".join(sections), crumbs=True)


@app.get("/dags/{dag_id}/runs/{run_id}/records", response_class=HTMLResponse)
def records_page(
    dag_id: str,
    run_id: str,
    stage: str = "",
    id: str = "",
    source: str = "",
    lang: str = "",
    status: str = "kept",
    offset: int = Query(0, ge=0),
    user=Depends(_user),
):
    run, stages, run_url = _resolve(dag_id, run_id, user)
    done = [s for s in stages if report.stage_status(storage.join(run_url, s))["status"] == "done"]
    if not done:
        raise HTTPException(404, f"run {run_id!r} of {dag_id} has no finished stage to browse yet")
    # By default the last documents with text: later stages (pack, index) hold sequences.
    stage = stage or next(
        (s for s in reversed(done) if "text" in report.dataset_columns(storage.join(run_url, s))), done[-1]
    )
    if stage not in done:
        raise HTTPException(
            404, f"stage {stage!r} has no finished dataset in run {run_id!r}; finished: {', '.join(done)}"
        )
    if status not in ("kept", "dropped"):
        raise HTTPException(404, f"status {status!r}: kept or dropped")
    links = RunLinks(run["pipeline"], safe_run_id(run_id))
    stage_url = storage.join(run_url, stage)
    columns = report.dataset_columns(stage_url)
    stamp = _finished_at(stage_url)
    sources = [v for v, _ in _value_counts(stage_url, "source", stamp, 200)] if "source" in columns else []
    langs = [v for v, _ in _value_counts(stage_url, "lang", stamp, 200)] if "lang" in columns else []
    index_url = report.index_of(run_url, done, stage)
    via = ""
    if status == "dropped":
        found = _dropped_records(stage_url, links, offset)
    elif index_url is not None and not id.strip():
        found = report.indexed_records(
            index_url, {"source": source, "lang": lang}, offset, RECORDS_PER_PAGE, TEXT_CHARS
        )
        via = f" (through the index of {escape(index_url.rstrip('/').rsplit('/', 1)[-1])})"
    else:
        found = report.find_records(
            stage_url,
            record_id=id.strip() or None,
            source=source or None,
            lang=lang or None,
            limit=RECORDS_PER_PAGE,
            text_chars=TEXT_CHARS,
            offset=offset,
        )
    form = (
        f'<form method="get" id="filter"><label>stage {_select("stage", done, stage, empty=False)}</label> '
        f"<label>records {_select('status', ['kept', 'dropped'], status, empty=False)}</label> "
        f'<label>id <input name="id" value="{escape(id)}" size="40"></label> '
        f"<label>source {_select('source', sources, source)}</label> "
    )
    if langs:
        form += f"<label>language {_select('lang', langs, lang)}</label> "
    form += '<button type="submit">Find</button></form>'
    if found["rows"]:
        head = "".join(f"<th>{escape(c)}</th>" for c in found["columns"])
        body = "".join(
            '<tr class="record">'
            + "".join(f'<td class="{escape(c)}">{_record_cell(c, r, links)}</td>' for c in found["columns"])
            + "</tr>"
            for r in found["rows"]
        )
        result = f'<table id="records"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    else:
        result = f'<p class="message" id="no-records">{escape(found["message"] or "no record matches")}</p>'
    base = f"{_run_href(dag_id, run_id)}/records?" + urlencode(
        {k: v for k, v in {"stage": stage, "status": status, "id": id, "source": source, "lang": lang}.items() if v}
    )
    pager = ""
    if offset or found.get("next_offset") is not None:
        pager = '<p class="pager">' + (
            f'<a id="previous" href="{escape(base)}&offset={max(offset - RECORDS_PER_PAGE, 0)}">previous</a> '
            if offset
            else ""
        )
        pager += (
            f'<a id="next" href="{escape(base)}&offset={found["next_offset"]}">next</a>'
            if found.get("next_offset") is not None
            else ""
        ) + "</p>"
    title = f"records of {dag_id} / {run_id}"
    back = f'<p><a href="{_run_href(dag_id, run_id)}">Back to the report</a></p>'
    return _page(
        title,
        f'<h1>Records: {escape(stage)}</h1>{back}{form}<p class="meta">{RECORDS_PER_PAGE} per page{via}; '
        f"texts cut at {TEXT_CHARS} characters</p>{result}{pager}",
        crumbs=True,
    )


def _dropped_records(stage_url: str, links: RunLinks, offset: int) -> dict:
    data = report.dropped_examples(stage_url, None, offset, RECORDS_PER_PAGE)
    rows = [
        {
            "id": r["id"],
            "source": r["source"],
            "reason": r["reason"],
            "detail": r["detail"],
            "text": None if r["snippet"] is None else r["snippet"]["before"][:TEXT_CHARS],
        }
        for r in data["rows"]
    ]
    return {
        "columns": ["id", "source", "reason", "detail", "text"],
        "rows": rows,
        "next_offset": data["next_offset"],
        "message": None if rows else "this stage dropped no document",
    }


def _record_cell(column: str, row: dict, links: RunLinks) -> str:
    value = row.get(column)
    text = escape("" if value is None else str(value))
    if column == "id" and value:
        return f'<a href="{escape(links.document(str(value)))}">{text}</a>'
    return text


def _resolve(dag_id: str, run_id: str, user):
    if dag_id not in REPORTED_DAGS:
        raise HTTPException(
            404, f"DAG {dag_id!r} has no data-quality report (reported DAGs: {', '.join(REPORTED_DAGS)})"
        )
    if not _can_read_runs(user, dag_id):
        raise HTTPException(403, f"you do not have access to the runs of DAG {dag_id!r}")
    run = _dag_run(dag_id, run_id)
    if run is None:
        raise HTTPException(404, f"DAG {dag_id!r} has no run {run_id!r}")
    stages, run_url, problem = _run_location(run)
    if problem:
        raise HTTPException(409, problem)
    return run, stages, run_url


# --------------------------------------------------------------------------- sections


class RunLinks:
    """Where the documents behind a run's numbers are: the pages keyed by the run's folder."""

    def __init__(self, pipeline: str, folder: str):
        self.pipeline, self.folder = pipeline, folder

    def _href(self, *parts: str, **query: str) -> str:
        query = {k: v for k, v in query.items() if v}
        path = "/".join([URL_PREFIX, "pipelines", quote(self.pipeline, safe=""), *parts])
        return path + ("?" + urlencode(query) if query else "")

    def examples(self, stage: str = "", **query: str) -> str:
        return self._href("runs", self.folder, "examples", stage=stage, **query)

    def cluster(self, stage: str, doc_id: str) -> str:
        return self._href("runs", self.folder, "clusters", stage=stage, id=doc_id)

    def document(self, doc_id: str) -> str:
        return self._href("runs", self.folder, "documents", id=doc_id)

    def trends(self) -> str:
        return self._href("trends")

    def compare(self) -> str:
        return self._href("compare", a=self.folder)


def _count_link(value: int, href: str | None) -> str:
    return f'<a href="{escape(href)}">{charts.number(value)}</a>' if href and value else charts.number(value)


def _run_facts(run_url: str, links: RunLinks) -> str:
    """Where the run is tracked, what its drift check said, and where to go next."""
    from tamis.tracking import read_pointer
    from tamis.trends import DRIFT_FILE

    facts = [
        f'<a id="examples-index" href="{escape(links.examples())}">documents behind every number</a>',
        f'<a id="trends" href="{escape(links.trends())}">trends of pipeline {escape(links.pipeline)}</a>',
        f'<a id="compare" href="{escape(links.compare())}">compare with another run</a>',
    ]
    pointer = read_pointer(run_url)
    if pointer:
        facts.append(
            f'MLflow run <code id="mlflow-run" title="{escape(pointer.get("tracking_uri", ""))}">'
            f"{escape(pointer.get('run_id', ''))}</code> (experiment {escape(pointer.get('experiment', ''))})"
        )
    drift_url = storage.join(run_url, DRIFT_FILE)
    if storage.exists(drift_url):
        drift = storage.read_json(drift_url)
        facts.append(
            f'drift check of {escape(str(drift.get("date")))}: <b id="drift" data-status="{escape(drift.get("status", ""))}">'
            f"{escape(drift.get('status', ''))}</b>"
            + (f" ({len(drift.get('breaches', []))} rates)" if drift.get("breaches") else "")
        )
    return '<p class="meta">' + " · ".join(facts) + "</p>"


def _stage_table(data: dict, links: RunLinks) -> str:
    rows = []
    for s in data["stages"]:
        gate = s["gate"]
        gate_cell = "—" if gate is None else ("passed" if gate["success"] else "FAILED")
        if s["status"] == "done":
            c = s["counts"]
            targets = {
                "dropped": links.examples(s["stage"], kind="dropped"),
                "quarantined": links.examples(
                    s["stage"], kind="quarantined", rule=next(iter(s["quarantine_reasons"]), "")
                ),
            }
            cells = "".join(
                f'<td class="num" data-count="{k}">{_count_link(c[k], targets.get(k))}</td>'
                for k in ("in", "kept", "dropped", "quarantined")
            )
            rate = (c["dropped"] + c["quarantined"]) / c["in"] if c["in"] else 0.0
            cells += f'<td class="num">{rate:.1%}</td><td class="num">{s["elapsed_s"] or 0:.1f}</td>'
        else:
            cells = f'<td colspan="6" class="message">{escape(s["status"])}{": " + escape(s["message"]) if s.get("message") else ""}</td>'
        rows.append(
            f'<tr data-stage="{escape(s["stage"])}" data-status="{escape(s["status"])}"><td>{escape(s["stage"])}</td>'
            f'{cells}<td class="gate">{gate_cell}</td></tr>'
        )
    return (
        '<h2>Stages</h2><table id="funnel"><thead><tr><th>stage</th><th>in</th><th>kept</th><th>dropped</th>'
        "<th>quarantined</th><th>lost</th><th>seconds</th><th>gate</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _funnel_section(data: dict) -> str:
    rows = report.funnel(data)
    if not rows:
        return '<p class="message">No stage has finished yet.</p>'
    return f'<h2>Funnel</h2><div class="figure">{charts.funnel(rows)}</div>'


def _reasons_section(data: dict, links: RunLinks) -> str:
    rows = report.reasons_by_rule(data)
    if not rows:
        return '<h2>Drop reasons</h2><p class="message">No document was dropped or quarantined.</p>'
    items = [(f"{r['stage']}: {r['rule']}", r["count"]) for r in rows]
    table = "".join(
        f'<tr data-stage="{escape(r["stage"])}" data-rule="{escape(r["rule"])}"><td>{escape(r["stage"])}</td>'
        f'<td>{escape(r["rule"])}</td><td>{r["kind"]}</td><td class="num">'
        f"{_count_link(r['count'], links.examples(r['stage'], kind=r['kind'], rule=r['rule']))}</td></tr>"
        for r in rows
    )
    return (
        f'<h2>Drop reasons</h2><div class="figure">{charts.hbars(items, "documents by drop rule", charts.DROPPED, 230)}</div>'
        '<table id="reasons"><thead><tr><th>stage</th><th>rule</th><th>kind</th><th>documents</th></tr></thead>'
        f"<tbody>{table}</tbody></table>"
    )


def _distributions(data: dict) -> str:
    parts = []
    text_stage = report.records_stage(data, "text")
    if text_stage:
        url = storage.join(data["run_url"], text_stage)
        columns = report.dataset_columns(url)
        if "lang" in columns:
            parts.append(
                f'<h3>Languages ({escape(text_stage)})</h3><div class="figure" id="languages">'
                f"{charts.hbars(list(_value_counts(url, 'lang', _finished_at(url))), 'documents by language')}</div>"
            )
        if "source" in columns:
            parts.append(
                f'<h3>Sources ({escape(text_stage)})</h3><div class="figure" id="sources">'
                f"{charts.hbars(list(_value_counts(url, 'source', _finished_at(url))), 'documents by source')}</div>"
            )
        parts.append(_histogram_block(url, "text", text_stage, "document length", " chars", "lengths"))
    token_stage = report.records_stage(data, "token_count")
    if token_stage:
        parts.append(
            _histogram_block(
                storage.join(data["run_url"], token_stage),
                "token_count",
                token_stage,
                "tokens per document",
                " tokens",
                "tokens",
            )
        )
    if not parts:
        return ""
    return "<h2>Distributions</h2>" + "".join(parts)


@lru_cache(maxsize=64)
def _histogram(url: str, column: str, finished_at: str) -> dict:
    """A finished dataset never changes, so its histogram is computed once per manifest."""
    return report.histogram(url, column, max_rows=HISTOGRAM_ROWS)


@lru_cache(maxsize=64)
def _value_counts(url: str, column: str, finished_at: str, limit: int = 30) -> tuple:
    return tuple(report.value_counts(url, column, limit=limit))


def _finished_at(url: str) -> str:
    return str(Dataset(url).manifest().get("finished_at"))


def _histogram_block(url: str, column: str, stage: str, title: str, unit: str, element_id: str) -> str:
    h = _histogram(url, column, _finished_at(url))
    note = f" (first {charts.number(h['rows'])} of {charts.number(h['total_rows'])})" if h["sampled"] else ""
    stats = (
        f"documents {charts.number(h['rows'])} · total {charts.number(h['sum'])} · median {charts.number(h['median'])}"
        f" · mean {charts.number(round(h['mean'], 1))} · p99 {charts.number(round(h['p99']))} · max {charts.number(h['max'])}"
    )
    return (
        f'<h3>{escape(title)} ({escape(stage)}){note}</h3><div class="figure" id="{element_id}">'
        f'{charts.histogram(h["edges"], h["counts"], title, unit)}<p class="meta">{stats}</p></div>'
    )


def _clusters_section(data: dict, links: RunLinks) -> str:
    blocks = []
    for s in data["stages"]:
        if s["status"] != "done":
            continue
        samples = report.cluster_samples(s["url"])
        if samples is None:
            continue
        items = "".join(
            f'<div class="cluster"><p><b><a class="cluster-link" href="{escape(links.cluster(s["stage"], c["survivor_id"]))}">'
            f"{c['size']} documents</a></b>{_similarity(c['similarity'])}</p>"
            f'<p class="doc"><span class="id">{escape(c["survivor_id"])} (kept)</span>{escape(c["survivor_text"])}</p>'
            f'<p class="doc"><span class="id">{escape(c["duplicate_id"] or "")} (dropped)</span>{escape(c["duplicate_text"])}</p></div>'
            for c in samples["clusters"]
        )
        blocks.append(
            f"<h3>{escape(s['stage'])}: {charts.number(samples['total_clusters'])} clusters, "
            f"{charts.number(samples['duplicates'])} duplicates</h3>{items or '<p class=message>No clusters.</p>'}"
        )
    return ("<h2>Duplicate clusters</h2>" + "".join(blocks)) if blocks else ""


def _similarity(value: float | None) -> str:
    return "" if value is None else f" · estimated similarity {value}"


def _pii_section(data: dict, links: RunLinks) -> str:
    blocks = []
    for s in data["stages"]:
        if s["status"] == "done" and s["pii"]:
            types = " · ".join(
                f'<a href="{escape(links.examples(s["stage"], kind="pii", entity=t))}">{escape(t)} '
                f"({charts.number(c)})</a>"
                for t, c in s["pii"].items()
            )
            blocks.append(
                f'<h3>{escape(s["stage"])}</h3><div class="figure" id="pii">'
                f"{charts.hbars(list(s['pii'].items()), 'PII entities found by type')}</div>"
                f'<p class="meta pii-types">documents with: {types}</p>'
            )
    return ("<h2>PII found (counts by entity type)</h2>" + "".join(blocks)) if blocks else ""


def _gates_section(data: dict) -> str:
    blocks = []
    for s in data["stages"]:
        gate = s["gate"]
        if gate is None:
            continue
        if gate.get("error"):
            blocks.append(
                f'<p class="error" data-stage="{escape(s["stage"])}">{escape(s["stage"])}: {escape(gate["error"])}</p>'
            )
            continue
        rows = []
        for e in gate["expectations"]:
            args = ", ".join(f"{k}={v}" for k, v in e["kwargs"].items())
            detail = "" if e["unexpected_count"] is None else f"{charts.number(e['unexpected_count'])} unexpected"
            if e["observed_value"] is not None:
                detail = f"observed {e['observed_value']}"
            rows.append(
                f'<tr class="{"passed" if e["success"] else "failed"}"><td>{escape(e["expectation"])}</td>'
                f"<td>{escape(args)}</td><td>{'passed' if e['success'] else 'FAILED'}</td><td>{escape(detail)}</td></tr>"
            )
        verdict = "passed" if gate["success"] else f"FAILED ({gate['failed']} failed)"
        # A failed gate opens by itself: that is what a reader came for.
        blocks.append(
            f'<details class="gate" data-stage="{escape(s["stage"])}" data-success="{str(gate["success"]).lower()}"'
            f"{'' if gate['success'] else ' open'}><summary><b>{escape(s['stage'])}</b>: {verdict}, "
            f"{gate['evaluated']} expectations</summary><table><thead><tr><th>expectation</th><th>arguments</th>"
            f"<th>result</th><th>detail</th></tr></thead><tbody>{''.join(rows)}</tbody></table></details>"
        )
    return ('<h2>Great Expectations</h2><div id="gates">' + "".join(blocks) + "</div>") if blocks else ""


# --------------------------------------------------------------------------- layout

STYLE = """
body{font-family:system-ui,sans-serif;margin:16px 24px;color:#1a202c;max-width:1100px}
h1{font-size:20px;margin:4px 0 8px} h2{font-size:17px;margin:22px 0 8px;border-bottom:1px solid #e2e8f0}
h3{font-size:14px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0} th,td{border:1px solid #e2e8f0;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f7fafc} td.num{text-align:right;font-variant-numeric:tabular-nums}
.meta{color:#4a5568;font-size:13px} .message{color:#744210;background:#fffbeb;padding:6px 10px}
.error{color:#9b2c2c;background:#fff5f5;padding:8px 12px} tr.failed td{background:#fff5f5}
td.state.success{color:#2f855a} td.state.failed{color:#c53030}
.cluster{border:1px solid #e2e8f0;padding:4px 10px;margin:6px 0} .doc{font-size:12px;white-space:pre-wrap}
.doc .id{display:block;color:#4a5568;font-family:monospace} td.text{white-space:pre-wrap;font-size:12px;max-width:560px} td.date{white-space:nowrap}
details.gate{margin:4px 0;font-size:13px} details.gate table{margin-left:16px}
nav{font-size:13px;margin-bottom:6px} form label{margin-right:10px;font-size:13px}
mark{background:#fefcbf;outline:1px solid #d69e2e} .changed{background:#fed7d7} .after .changed{background:#c6f6d5}
.example{border-bottom:1px solid #e2e8f0;padding:4px 0} .pair,.cluster-grid{display:flex;gap:10px;align-items:flex-start}
.side,.member{flex:1;min-width:0;border:1px solid #e2e8f0;padding:4px 8px} .member.survivor{border-color:#2f855a}
.cluster-grid{flex-wrap:wrap} .member{flex:1 1 30%;max-width:32%} .member .text{max-height:260px;overflow:auto}
.member a.document{word-break:break-all}
.text{white-space:pre-wrap;font-size:12px} h4{font-size:12px;margin:2px 0;color:#4a5568} .pager{font-size:13px}
tr.breach td{background:#fff5f5} td.diff{font-weight:600}
"""

# The one inline style sheet is allowed by its hash; the Airflow UI shows the pages in a frame.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; "
    f"style-src 'sha256-{base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()}'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'self'; base-uri 'none'"
)


def _page(title: str, body: str, crumbs: bool = False) -> str:
    nav = f'<nav><a href="{URL_PREFIX}/">All runs</a></nav>' if crumbs else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} · tamis</title>'
        f"<style>{STYLE}</style></head><body>{nav}{body}</body></html>"
    )


def _run_href(dag_id: str, run_id: str) -> str:
    return f"{URL_PREFIX}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def _select(name: str, values: list[str], chosen: str, empty: bool = True) -> str:
    options = ['<option value="">any</option>'] if empty else []
    options += [f'<option value="{escape(v)}"{" selected" if v == chosen else ""}>{escape(v)}</option>' for v in values]
    return f'<select name="{name}">{"".join(options)}</select>'


from tamis_reports import views  # noqa: E402,F401  (the pages across runs register on this app)
