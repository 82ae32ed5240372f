"""The pages across runs of a pipeline, and the documents behind every number.

Their runs are named by folder (``<storage_root>/runs/<folder>``), so runs made outside
Airflow (``tamis build``, ``tamis nightly run``) have pages too. A folder that belongs to a
DAG run needs read access to that DAG's runs; any other needs read access to the runs of
every reported DAG, since its data may be any of theirs.
"""

from __future__ import annotations

from functools import lru_cache
from html import escape
from typing import Any
from urllib.parse import urlencode

from fastapi import Depends, HTTPException, Query
from fastapi.responses import HTMLResponse

from tamis import compare, report, storage, trends
from tamis.dataset import Dataset
from tamis.pipeline import PIPELINES_DIR, ConfigError, Pipeline, load_pipeline, safe_run_id
from tamis.tracking import read_pointer
from tamis_reports import charts
from tamis_reports.app import (
    REPORTED_DAGS,
    URL_PREFIX,
    _can_read_runs,
    _page,
    _readable_dags,
    _run_href,
    _user,
    app,
)

TOP_SERIES = 8
CLUSTER_MEMBERS = 8  # shown beside the survivor
CLUSTER_CHARS = 700
DOCUMENT_CHARS = 20_000


# --------------------------------------------------------------------------- where and who


def known_pipelines() -> list[str]:
    return sorted(p.stem for p in PIPELINES_DIR.glob("*.yaml"))


@lru_cache(maxsize=16)
def _cached_pipeline(name: str, stamp: float) -> Pipeline:
    return load_pipeline(name)


def pipeline_of(name: str) -> Pipeline:
    if name not in known_pipelines():
        raise HTTPException(404, f"no pipeline {name!r}; pipelines: {', '.join(known_pipelines())}")
    try:
        return _cached_pipeline(name, (PIPELINES_DIR / f"{name}.yaml").stat().st_mtime)
    except ConfigError as exc:
        raise HTTPException(409, f"the pipeline config cannot be loaded: {exc}") from exc


def dag_runs_by_folder() -> dict[str, tuple[str, str]]:
    """Run folder -> (DAG id, run id) of the reported DAGs' runs in Airflow's database."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(select(DagRun.dag_id, DagRun.run_id).where(DagRun.dag_id.in_(REPORTED_DAGS))).all()
    return {safe_run_id(run_id): (dag_id, run_id) for dag_id, run_id in rows}


def may_read(user, folder: str, owners: dict[str, tuple[str, str]], readable: list[str]) -> bool:
    owner = owners.get(folder)
    if owner is not None:
        return owner[0] in readable
    return set(readable) == set(REPORTED_DAGS)


def authorize(user, folder: str) -> tuple[str, str] | None:
    """The DAG run a folder belongs to (None: made outside Airflow); 403/404 when not readable."""
    if not trends.is_run_folder(folder):
        raise HTTPException(404, f"{folder!r} is not a run folder name")
    owners = dag_runs_by_folder()
    owner = owners.get(folder)
    if owner is not None:
        if not _can_read_runs(user, owner[0]):
            raise HTTPException(403, f"you do not have access to the runs of DAG {owner[0]!r}")
        return owner
    if not all(_can_read_runs(user, dag) for dag in REPORTED_DAGS):
        raise HTTPException(
            403,
            "this run was made outside Airflow; its report needs access to the runs of "
            f"every reported DAG ({', '.join(REPORTED_DAGS)})",
        )
    return None


def run_url(pipeline: Pipeline, folder: str) -> str:
    url = storage.join(pipeline.storage_root, "runs", folder)
    if not report.run_exists(url):
        raise HTTPException(404, f"pipeline {pipeline.name!r} has no run folder {folder!r}")
    return url


def finished_stage(pipeline: Pipeline, folder: str, stage: str) -> str:
    if stage not in pipeline.stage_names:
        raise HTTPException(404, f"pipeline {pipeline.name!r} has no stage {stage!r}")
    url = storage.join(run_url(pipeline, folder), stage)
    if not Dataset(url).is_complete():
        raise HTTPException(404, f"stage {stage!r} has not finished in run {folder!r}")
    return url


def href(pipeline: str, *parts: str, **query: Any) -> str:
    path = "/".join([URL_PREFIX, "pipelines", pipeline, *parts])
    query = {k: v for k, v in query.items() if v not in (None, "")}
    return path + ("?" + urlencode(query) if query else "")


def examples_href(pipeline: str, folder: str, stage: str, **query: Any) -> str:
    return href(pipeline, "runs", folder, "examples", stage=stage, **query)


def document_href(pipeline: str, folder: str, doc_id: str, part: str | None = None) -> str:
    return href(pipeline, "runs", folder, "documents", id=doc_id, part=part)


def run_label(run: trends.RunSummary) -> str:
    """A nightly run by its day; another by the day it finished, with an asterisk."""
    return run.date if run.kind == "nightly" else f"{run.date}*"


def run_link(pipeline: str, folder: str, owners: dict[str, tuple[str, str]]) -> str:
    owner = owners.get(folder)
    target = _run_href(*owner) if owner else href(pipeline, "runs", folder, "examples")
    return f'<a href="{escape(target)}">{escape(folder)}</a>'


def _nav(pipeline: str) -> str:
    return (
        f'<nav><a href="{URL_PREFIX}/">All runs</a> · <a href="{href(pipeline, "trends")}">Trends of {escape(pipeline)}</a>'
        f' · <a href="{href(pipeline, "compare")}">Compare runs</a></nav>'
    )


def _pager(base: str, offset: int, limit: int, next_offset: int | None, total: int | None) -> str:
    shown = f"{offset + 1}–{offset + limit if next_offset else (offset + limit if total is None else total)}"
    parts = [f'<span class="meta">{shown}{"" if total is None else " of " + charts.number(total)}</span>']
    if offset > 0:
        parts.append(f' <a id="previous" href="{escape(base)}&offset={max(offset - limit, 0)}">previous</a>')
    if next_offset is not None:
        parts.append(f' <a id="next" href="{escape(base)}&offset={next_offset}">next</a>')
    return f'<p class="pager">{"".join(parts)}</p>'


def _marked(snippet: dict[str, Any] | None) -> str:
    if snippet is None:
        return '<span class="meta">(text not shown)</span>'
    lead = "… " if snippet["start"] > 0 else ""
    tail = " …" if snippet["cut_end"] else ""
    match = f"<mark>{escape(snippet['match'])}</mark>" if snippet["match"] else ""
    return f"{lead}{escape(snippet['before'])}{match}{escape(snippet['after'])}{tail}"


def _runs(segments: list) -> str:
    out = []
    for kind, text in segments:
        out.append(f'<span class="changed">{escape(text)}</span>' if kind == "changed" else escape(text))
    return "".join(out)


def _diff_block(diff: dict[str, Any], before: str = "before", after: str = "after") -> str:
    cut = '<p class="meta">first characters only</p>' if diff.get("cut") else ""
    return (
        f'<div class="pair"><div class="side before"><h4>{before}</h4><div class="text">{_runs(diff["before"])}</div></div>'
        f'<div class="side after"><h4>{after}</h4><div class="text">{_runs(diff["after"])}</div></div></div>{cut}'
    )


# --------------------------------------------------------------------------- trends


def _series_links(pipeline: str, runs: list[trends.RunSummary], key: str) -> list[str | None]:
    part = trends.split_key(key)
    stage = part["stage"]
    links: list[str | None] = []
    for run in runs:
        if stage is None:  # a language share: of the run's output, not of one stage's documents
            links.append(None)
        elif part["kind"] in ("drop_rate", "quarantine_rate"):
            kind = "dropped" if part["kind"] == "drop_rate" else "quarantined"
            links.append(examples_href(pipeline, run.folder, stage, kind=kind, rule=part["name"]))
        elif part["kind"] == "duplicate_rate":
            reasons = run.stages.get(stage, {}).get("declares", {}).get("duplicate_reasons") or []
            links.append(
                examples_href(pipeline, run.folder, stage, kind="dropped", rule=reasons[0]) if reasons else None
            )
        elif part["kind"] == "pii_rate":
            links.append(examples_href(pipeline, run.folder, stage, kind="pii", entity=part["name"]))
        else:
            links.append(None)
    return links


def _breached(runs: list[trends.RunSummary]) -> dict[tuple[str, str], dict]:
    found = {}
    for run in runs:
        for breach in (run.drift or {}).get("breaches", []):
            found[(run.folder, breach["series"])] = breach
    return found


def _chart(
    pipeline: str,
    runs: list[trends.RunSummary],
    keys: list[str],
    names: list[str],
    title: str,
    breaches: dict,
    element_id: str,
    percent: bool = True,
) -> str:
    labels = [run_label(r) for r in runs]
    series = []
    for key, name in zip(keys, names):
        rates = [r.rates.get(key, 0.0) if _measured(r, key) else None for r in runs]
        series.append(
            {
                "name": name,
                "values": rates,
                "links": _series_links(pipeline, runs, key),
                "breaches": [(r.folder, key) in breaches for r in runs],
            }
        )
    return (
        f'<h3>{escape(title)}</h3><div class="figure" id="{escape(element_id)}">'
        f"{charts.lines(labels, series, title, percent=percent, titles=[r.folder for r in runs])}</div>"
    )


def _measured(run: trends.RunSummary, key: str) -> bool:
    """Whether a run could have had this rate: its stage finished (a rule that did not fire is 0)."""
    stage = trends.split_key(key)["stage"]
    if stage is not None:
        return stage in run.stages
    return any(k.startswith("lang_share/") for k in run.rates)


def _rate(kind: str, value: float, signed: bool = False) -> str:
    """Rates as percentages; PII entities per document as a number."""
    if kind == "pii_rate":
        return f"{value:+.3g}" if signed else f"{value:.3g}"
    return f"{value:+.2%}" if signed else f"{value:.2%}"


def _key_part(key: str, part: str) -> str:
    """The stage or the name in a rate key chosen by its prefix, which has it."""
    value = trends.split_key(key)[part]
    assert value is not None, f"rate key {key!r} has no {part}"
    return value


def _top_keys(runs: list[trends.RunSummary], prefix: str) -> list[str]:
    peaks: dict[str, float] = {}
    for run in runs:
        for key, value in run.rates.items():
            if key.startswith(prefix):
                peaks[key] = max(peaks.get(key, 0.0), value)
    return sorted(peaks, key=lambda k: (-peaks[k], k))[:TOP_SERIES]


@app.get("/pipelines/{name}/trends", response_class=HTMLResponse)
def trends_page(name: str, user=Depends(_user)):
    pipeline = pipeline_of(name)
    readable = _readable_dags(user)
    if not readable:
        raise HTTPException(403, "you do not have access to the runs of any reported DAG")
    owners = dag_runs_by_folder()
    runs = [r for r in trends.pipeline_runs(pipeline) if may_read(user, r.folder, owners, readable)]
    title = f"Trends of pipeline {name}"
    config = pipeline.reports.drift
    head = (
        f'<h1>{escape(title)}</h1><p class="meta">{sum(r.kind == "nightly" for r in runs)} nightly runs, '
        f"{sum(r.kind == 'manual' for r in runs)} other runs · drift check: the last {config.window} nights, "
        f"tolerance {config.tolerance:.1%}, on breach <b>{config.on_breach}</b></p>"
    )
    if not runs:
        return _page(title, _nav(name) + head + '<p class="message">No finished run of this pipeline yet.</p>')
    breaches = _breached(runs)
    sections = [
        _nav(name),
        head,
        _drift_section(name, runs),
        "<h2>Over time</h2>",
        '<p class="meta">One point per run: nightly runs by their day, other runs (*) by the day they '
        "finished. A red point left its trailing window. Click a point for the documents behind it.</p>",
    ]
    for stage in pipeline.stage_names:
        keys = _top_keys(runs, f"drop_rate/{stage}/") + _top_keys(runs, f"quarantine_rate/{stage}/")
        if keys:
            names = [_key_part(k, "name") for k in keys]
            sections.append(_chart(name, runs, keys, names, f"{stage}: drop rate by rule", breaches, f"rules-{stage}"))
    dup = _top_keys(runs, "duplicate_rate/")
    if dup:
        sections.append(
            _chart(name, runs, dup, [_key_part(k, "stage") for k in dup], "duplicate rate", breaches, "duplicates")
        )
    pii = _top_keys(runs, "pii_rate/")
    if pii:
        sections.append(
            _chart(
                name,
                runs,
                pii,
                [f"{trends.split_key(k)['name']}" for k in pii],
                "PII entities per document, by type",
                breaches,
                "pii-rates",
                percent=False,
            )
        )
    langs = _top_keys(runs, "lang_share/")
    if langs:
        sections.append(
            _chart(name, runs, langs, [_key_part(k, "name") for k in langs], "language mix", breaches, "languages")
        )
    sections.append(_counts_chart(pipeline, runs))
    tokens = [r.tokens for r in runs]
    if any(t is not None for t in tokens):
        sections.append(
            '<h3>tokens</h3><div class="figure" id="tokens">'
            + charts.lines(
                [run_label(r) for r in runs],
                [{"name": "tokens", "values": tokens}],
                "tokens",
                percent=False,
                titles=[r.folder for r in runs],
            )
            + "</div>"
        )
    sections.append(_runs_table(name, runs, owners))
    sections.append(_releases_section(pipeline, owners))
    return _page(title, "".join(sections))


def _counts_chart(pipeline: Pipeline, runs: list[trends.RunSummary]) -> str:
    series = []
    for stage in pipeline.stage_names:
        values = [r.stages[stage]["counts"]["kept"] if stage in r.stages else None for r in runs]
        if any(v is not None for v in values):
            series.append({"name": f"{stage} kept", "values": values})
    first = pipeline.stage_names[0]
    series.insert(
        0,
        {
            "name": f"{first} in",
            "values": [r.stages[first]["counts"]["in"] if first in r.stages else None for r in runs],
        },
    )
    return (
        '<h3>documents per stage</h3><div class="figure" id="counts">'
        + charts.lines(
            [run_label(r) for r in runs],
            series[:TOP_SERIES],
            "documents per stage",
            percent=False,
            titles=[r.folder for r in runs],
        )
        + "</div>"
    )


def _drift_section(name: str, runs: list[trends.RunSummary]) -> str:
    checked = [(r, r.drift) for r in runs if r.drift is not None]
    if not checked:
        return '<h2>Drift</h2><p class="message">No nightly run has been checked yet.</p>'
    last, last_drift = checked[-1]
    status = last_drift.get("status", "?")
    rows = []
    for run, drift in reversed(checked):
        for b in drift.get("breaches", []):
            links = _series_links(name, [run], b["series"])
            target = links[0] or href(name, "runs", run.folder, "examples")
            rows.append(
                f'<tr class="breach" data-run="{escape(run.folder)}" data-series="{escape(b["series"])}">'
                f'<td>{escape(run.date)}</td><td>{escape(b["series"])}</td><td class="num">{_rate(b["kind"], b["value"])}</td>'
                f'<td class="num">{_rate(b["kind"], b["baseline"])}</td><td class="num">{_rate(b["kind"], b["change"], True)}</td>'
                f"<td>{'appended' if run.appended else 'not appended'}</td>"
                f'<td><a class="examples" href="{escape(target)}">documents</a></td></tr>'
            )
    table = (
        (
            '<table id="drift"><thead><tr><th>night</th><th>rate</th><th>value</th><th>baseline</th><th>change</th>'
            "<th>day</th><th></th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        )
        if rows
        else ""
    )
    return (
        f'<h2>Drift</h2><p id="drift-status" data-status="{escape(status)}">Last checked night '
        f"<b>{escape(last.date)}</b>: <b>{escape(status)}</b> ({last_drift.get('checked', 0)} rates against "
        f"{last_drift.get('window', 0)} nights).</p>{table}"
    )


def _runs_table(name: str, runs: list[trends.RunSummary], owners: dict) -> str:
    rows = []
    for run in reversed(runs):
        first = next(iter(run.stages.values()))
        last_stage, last = list(run.stages.items())[-1]
        pointer = read_pointer(run.url)
        rows.append(
            f'<tr data-run="{escape(run.folder)}" data-kind="{run.kind}"><td>{escape(run.date)}</td><td>{run.kind}</td>'
            f'<td>{run_link(name, run.folder, owners)}</td><td class="num">{charts.number(first["counts"]["in"])}</td>'
            f'<td class="num">{charts.number(last["counts"]["kept"])} ({escape(last_stage)})</td>'
            f"<td>{_mlflow_cell(pointer)}</td></tr>"
        )
    folders = [r.folder for r in reversed(runs)]
    form = ""
    if len(folders) > 1:
        form = (
            f'<form method="get" id="compare-form" action="{href(name, "compare")}"><label>compare '
            f"{_options('a', folders, folders[1])}</label> <label>with {_options('b', folders, folders[0])}</label> "
            '<button type="submit">Compare</button></form>'
        )
    return (
        '<h2>Runs</h2><table id="trend-runs"><thead><tr><th>date</th><th>kind</th><th>run</th><th>in</th><th>out</th>'
        "<th>MLflow</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>" + form
    )


def _options(field: str, values: list[str], chosen: str) -> str:
    options = "".join(
        f'<option value="{escape(v)}"{" selected" if v == chosen else ""}>{escape(v)}</option>' for v in values
    )
    return f'<select name="{field}">{options}</select>'


def _mlflow_cell(pointer: dict | None) -> str:
    if not pointer:
        return "—"
    uri = pointer.get("tracking_uri", "")
    run_id = pointer.get("run_id", "")
    if uri.startswith(("http://", "https://")):
        link = f"{uri.rstrip('/')}/#/experiments/{pointer.get('experiment_id')}/runs/{run_id}"
        return f'<a class="mlflow" href="{escape(link)}">{escape(run_id[:12])}</a>'
    return f'<span class="mlflow" title="{escape(uri)}">{escape(run_id[:12])}</span>'


def _releases_section(pipeline: Pipeline, owners: dict) -> str:
    from tamis.release import release_config

    try:
        config = release_config(pipeline)
    except (ConfigError, ValueError):
        return ""
    releases = _releases(config.remote_url, config.endpoint_url or "")
    if not releases:
        return ""
    rows = "".join(
        f'<tr data-version="{escape(r["version"])}"><td>{escape(r["version"])}</td><td>{escape(r.get("created_at") or "")}</td>'
        f'<td><code title="sha256 of dvc.lock">{escape((r.get("lock_sha256") or "")[:12])}</code></td>'
        f"<td>{escape(r.get('source_run_id') or '—')}</td><td>{_mlflow_cell(r.get('mlflow'))}</td></tr>"
        for r in releases
    )
    return (
        '<h2>Releases</h2><p class="meta">Each is restored with <code>dvc pull</code> from its folder '
        f"<code>{escape(config.remote_url)}/releases/&lt;version&gt;</code> (dvc.lock, dvc.yaml, pipeline.yaml).</p>"
        '<table id="releases"><thead><tr><th>version</th><th>created</th><th>DVC revision (dvc.lock)</th>'
        f"<th>from run</th><th>MLflow</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _releases(remote: str, endpoint: str, limit: int = 20) -> list[dict[str, Any]]:
    import json

    fs, root = storage.filesystem(storage.join(remote, "releases"))
    if not fs.exists(root):
        return []
    out = []
    for folder in sorted(fs.ls(root, detail=False), reverse=True)[:limit]:
        try:
            manifest = json.loads(fs.cat_file(f"{folder}/release.json"))
        except (FileNotFoundError, ValueError):
            continue
        pointer = None
        if fs.exists(f"{folder}/mlflow.json"):
            pointer = json.loads(fs.cat_file(f"{folder}/mlflow.json"))
        out.append(
            {
                "version": manifest.get("version"),
                "created_at": manifest.get("created_at"),
                "lock_sha256": manifest.get("dvc", {}).get("lock_sha256"),
                "source_run_id": manifest.get("source_run_id"),
                "mlflow": pointer,
            }
        )
    return sorted(out, key=lambda r: r.get("created_at") or "", reverse=True)


# --------------------------------------------------------------------------- examples


@app.get("/pipelines/{name}/runs/{folder}/examples", response_class=HTMLResponse)
def examples_page(
    name: str,
    folder: str,
    stage: str = "",
    kind: str = "dropped",
    rule: str = "",
    entity: str = "",
    offset: int = Query(0, ge=0),
    user=Depends(_user),
):
    pipeline = pipeline_of(name)
    owner = authorize(user, folder)
    url = run_url(pipeline, folder)
    done = [s for s in pipeline.stage_names if Dataset(storage.join(url, s)).is_complete()]
    back = (
        f'<p class="meta">run {run_link(name, folder, {folder: owner} if owner else {})} · '
        f'<a href="{href(name, "trends")}">trends</a></p>'
    )
    if not stage:
        return _page(
            f"examples of {folder}",
            _nav(name) + f"<h1>Run {escape(folder)}</h1>{back}" + _example_index(name, folder, url, done),
        )
    stage_url = finished_stage(pipeline, folder, stage)
    limit = report.EXAMPLES_PER_PAGE
    base = examples_href(name, folder, stage, kind=kind, rule=rule, entity=entity)
    if kind == "dropped":
        data = report.dropped_examples(stage_url, rule or None, offset, limit)
        title = f"{stage}: documents dropped by {rule or 'any rule'}"
        body = _dropped_body(name, folder, stage_url, data)
    elif kind == "quarantined":
        data = report.quarantine_examples(stage_url, rule, offset, limit)
        title = f"{stage}: input quarantined as {rule}"
        body = _quarantine_body(data)
    elif kind == "pii":
        data = report.pii_examples(stage_url, entity, offset, limit)
        title = f"{stage}: documents with {entity}"
        body = _pii_body(name, folder, data)
    elif kind == "changed":
        limit = 10
        data = report.changed_examples(stage_url, offset, limit)
        title = f"{stage}: before and after"
        body = _changed_body(name, folder, data)
    else:
        raise HTTPException(404, f"no examples of kind {kind!r} (dropped, quarantined, pii, changed)")
    pager = _pager(base, offset, limit, data.get("next_offset"), data.get("total"))
    return _page(title, _nav(name) + f'<h1 id="examples-title">{escape(title)}</h1>{back}{pager}{body}{pager}')


def _example_index(name: str, folder: str, url: str, done: list[str]) -> str:
    rows = []
    for stage in done:
        manifest = Dataset(storage.join(url, stage)).manifest()
        links = [
            f'<a href="{escape(examples_href(name, folder, stage, kind="dropped", rule=r))}">{escape(r)} '
            f"({charts.number(c)})</a>"
            for r, c in manifest.get("drop_reasons", {}).items()
        ]
        links += [
            f'<a href="{escape(examples_href(name, folder, stage, kind="quarantined", rule=r))}">{escape(r)} '
            f"({charts.number(c)}, quarantined)</a>"
            for r, c in manifest.get("quarantine_reasons", {}).items()
        ]
        links += [
            f'<a href="{escape(examples_href(name, folder, stage, kind="pii", entity=t))}">{escape(t)} '
            f"({charts.number(c)})</a>"
            for t, c in report.pii_counts(manifest).items()
        ]
        links.append(f'<a href="{escape(examples_href(name, folder, stage, kind="changed"))}">before / after</a>')
        rows.append(f"<tr><td>{escape(stage)}</td><td>{' · '.join(links)}</td></tr>")
    return (
        '<table id="example-index"><thead><tr><th>stage</th><th>documents behind</th></tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table>"
    )


def _dropped_body(name: str, folder: str, stage_url: str, data: dict) -> str:
    if not data["rows"]:
        return '<p class="message">No document on this page.</p>'
    has_clusters = bool(report.cluster_files(stage_url))
    note = (
        '<p class="meta">This stage looks for PII: what it dropped is listed without text.</p>'
        if data["text_hidden"]
        else ""
    )
    items = []
    for row in data["rows"]:
        extra = ""
        if data["duplicate"] and row["detail"]:
            extra = (
                f' · duplicate of <a class="survivor" href="{escape(document_href(name, folder, row["detail"]))}">'
                f"{escape(row['detail'])}</a>"
            )
            if has_clusters:
                extra += (
                    f' · <a class="cluster" href="{escape(href(name, "runs", folder, "clusters", stage=data["stage"], id=row["id"]))}">'
                    "cluster</a>"
                )
        detail = "" if data["duplicate"] else escape(row["detail"] or "")
        items.append(
            f'<div class="example" data-id="{escape(row["id"])}"><p><a class="document" '
            f'href="{escape(document_href(name, folder, row["id"], row["part"]))}">{escape(row["id"])}</a>'
            f" · {escape(row['reason'])}{': ' + detail if detail else ''}{extra}</p>"
            f'<p class="doc">{_marked(row["snippet"])}</p></div>'
        )
    return note + "".join(items)


def _quarantine_body(data: dict) -> str:
    rows = "".join(
        f'<tr><td>{escape(r.get("source_file") or "")}</td><td class="num">{r.get("line") if r.get("line") is not None else ""}</td>'
        f"<td>{escape(r.get('reason') or '')}</td><td>{escape(r.get('detail') or '')}</td>"
        f'<td class="text">{escape(r.get("sample") or "")}</td></tr>'
        for r in data["rows"]
    )
    return (
        (
            '<table id="quarantine"><thead><tr><th>file</th><th>line</th><th>reason</th><th>detail</th><th>sample</th>'
            f"</tr></thead><tbody>{rows}</tbody></table>"
        )
        if rows
        else '<p class="message">Nothing on this page.</p>'
    )


def _pii_body(name: str, folder: str, data: dict) -> str:
    if data.get("message"):
        return f'<p class="message">{escape(data["message"])}</p>'
    items = []
    for row in data["rows"]:
        text = row["text"]
        if text is None:
            shown = '<span class="meta">(text not shown: it is neither masked nor flagged)</span>'
        else:
            pieces, last = [], 0
            for start, end in row["marks"]:
                pieces.append(escape(text[last:start]) + f"<mark>{escape(text[start:end])}</mark>")
                last = end
            shown = "".join(pieces) + escape(text[last:])
        items.append(
            f'<div class="example" data-id="{escape(row["id"])}"><p><a class="document" '
            f'href="{escape(document_href(name, folder, row["id"], row["part"]))}">{escape(row["id"])}</a> · '
            f'{row.get("pii_count", 0)} found: {escape(row.get("pii_types") or "")}</p><p class="doc">{shown}</p></div>'
        )
    return (
        ('<p class="meta">Masked values are shown as their mask, never as the value.</p>' + "".join(items))
        if items
        else '<p class="message">No document on this page.</p>'
    )


def _changed_body(name: str, folder: str, data: dict) -> str:
    if data.get("message"):
        return f'<p class="message">{escape(data["message"])}</p>'
    note = (
        '<p class="meta">What this stage masked is blanked in the text before it.</p>' if data.get("redacted") else ""
    )
    items = [
        f'<div class="example changed-doc" data-id="{escape(r["id"])}"><p><a class="document" '
        f'href="{escape(document_href(name, folder, r["id"], r["part"]))}">{escape(r["id"])}</a></p>{_diff_block(r)}</div>'
        for r in data["rows"]
    ]
    return note + ("".join(items) if items else '<p class="message">This stage changed no text on this page.</p>')


# --------------------------------------------------------------------------- clusters and documents


@app.get("/pipelines/{name}/runs/{folder}/clusters", response_class=HTMLResponse)
def cluster_page(name: str, folder: str, stage: str, id: str, user=Depends(_user)):
    pipeline = pipeline_of(name)
    authorize(user, folder)
    stage_url = finished_stage(pipeline, folder, stage)
    cluster = report.cluster_members(stage_url, id, limit=CLUSTER_MEMBERS, chars=CLUSTER_CHARS)
    if cluster is None:
        raise HTTPException(404, f"{id!r} is in no duplicate cluster of stage {stage!r}")
    s = cluster["survivor"]
    cells = [
        f'<div class="member survivor" data-id="{escape(s["id"])}"><h4>kept (survivor)</h4><p><a class="document" '
        f'href="{escape(document_href(name, folder, s["id"], s["part"]))}">{escape(s["id"])}</a></p>'
        f'<div class="text">{escape(s["text"])}</div></div>'
    ]
    for m in cluster["members"]:
        similarity = "—" if m["similarity"] is None else f"{m['similarity']:.3f}"
        cells.append(
            f'<div class="member" data-id="{escape(m["id"])}" data-similarity="{similarity}"><h4>dropped · '
            f'Jaccard ≈ {similarity}</h4><p><a class="document" href="{escape(document_href(name, folder, m["id"], m["part"]))}">'
            f'{escape(m["id"])}</a></p><div class="text">{escape(m["text"])}</div></div>'
        )
    more = f'<p class="meta">and {cluster["more_members"]} more members</p>' if cluster["more_members"] else ""
    title = f"{stage}: a cluster of {cluster['size']} documents"
    return _page(
        title,
        _nav(name) + f'<h1>{escape(title)}</h1><p class="meta">Estimated Jaccard similarity of each '
        "member with the survivor (MinHash, the stage's own settings).</p>"
        f'<div class="cluster-grid" id="cluster">{"".join(cells)}</div>{more}',
    )


@app.get("/pipelines/{name}/runs/{folder}/documents", response_class=HTMLResponse)
def document_page(name: str, folder: str, id: str, part: str = "", user=Depends(_user)):
    pipeline = pipeline_of(name)
    authorize(user, folder)
    url = run_url(pipeline, folder)
    journey = report.document_journey(url, pipeline.stage_names, id, part or None)
    if not journey["found"]:
        raise HTTPException(404, f"run {folder!r} holds no document {id!r}")
    rows, texts = [], []
    for step in journey["steps"]:
        what = step["status"]
        if what == "dropped":
            what = f'dropped: <b class="reason">{escape(step["reason"] or "")}</b> {escape(step.get("detail") or "")}'
            if step.get("duplicate_of"):
                what = (
                    f'dropped: <b class="reason">{escape(step["reason"])}</b>, duplicate of '
                    f'<a class="survivor" href="{escape(document_href(name, folder, step["duplicate_of"]))}">{escape(step["duplicate_of"])}</a>'
                )
            what += (
                f' · <a href="{escape(examples_href(name, folder, step["stage"], kind="dropped", rule=step["reason"]))}">'
                "all documents of this rule</a>"
            )
        elif step.get("diff"):
            what += " · changed the text"
            texts.append(f"<h3>{escape(step['stage'])}: before and after</h3>{_diff_block(step['diff'])}")
        rows.append(
            f'<tr data-stage="{escape(step["stage"])}" data-status="{escape(step["status"])}">'
            f"<td>{escape(step['stage'])}</td><td>{what}</td></tr>"
        )
    last_text = next((s["text"] for s in reversed(journey["steps"]) if s.get("text") is not None), None)
    record: dict[str, Any] = next((s["record"] for s in reversed(journey["steps"]) if s.get("record")), {})
    fields = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in record.items())
    body = (
        f'<h1 id="document-id">{escape(id)}</h1><p class="meta">run {escape(folder)} · part {escape(journey["part"] or "")}</p>'
        '<h2>Through the stages</h2><table id="journey"><thead><tr><th>stage</th><th>what happened</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    if fields:
        body += f'<h2>Record</h2><table id="record">{fields}</table>'
    if journey.get("text_hidden"):
        body += '<p class="message">A stage that looks for PII dropped this document: its text is not shown.</p>'
    elif last_text is not None:
        cut = (
            f'<p class="meta">first {charts.number(DOCUMENT_CHARS)} of {charts.number(len(last_text))} characters</p>'
            if len(last_text) > DOCUMENT_CHARS
            else ""
        )
        body += f'<h2>Text (as last kept)</h2>{cut}<div class="doc text" id="text">{escape(last_text[:DOCUMENT_CHARS])}</div>'
    return _page(f"document {id}", _nav(name) + body + "".join(texts))


# --------------------------------------------------------------------------- compare


@app.get("/pipelines/{name}/compare", response_class=HTMLResponse)
def compare_page(name: str, a: str = "", b: str = "", user=Depends(_user)):
    pipeline = pipeline_of(name)
    readable = _readable_dags(user)
    owners = dag_runs_by_folder()
    folders = [f for f in trends.run_folders(pipeline) if may_read(user, f, owners, readable)]
    form = (
        f'<form method="get" id="compare-form"><label>run A {_options("a", folders, a)}</label> '
        f'<label>run B {_options("b", folders, b)}</label> <button type="submit">Compare</button></form>'
    )
    title = "Compare two runs"
    if not a or not b:
        return _page(title, _nav(name) + f"<h1>{title}</h1>{form}")
    for folder in (a, b):
        authorize(user, folder)
    data = compare.compare_runs(run_url(pipeline, a), run_url(pipeline, b), pipeline.stage_names)
    rows = []
    for r in data["counts"]:
        link_a = link_b = ""
        if r["kind"] in ("dropped", "quarantined") and r["name"] not in ("in", "kept"):
            link_a = examples_href(name, a, r["stage"], kind=r["kind"], rule=r["name"])
            link_b = examples_href(name, b, r["stage"], kind=r["kind"], rule=r["name"])
        rows.append(
            f'<tr class="{r["kind"]}" data-stage="{escape(r["stage"])}" data-name="{escape(r["name"])}" data-kind="{r["kind"]}">'
            f"<td>{escape(r['stage'])}</td><td>{escape(r['name'])}</td><td>{r['kind'] if r['kind'] != 'count' else ''}</td>"
            f"{_count_cell(r['a'], link_a, 'a')}{_count_cell(r['b'], link_b, 'b')}"
            f'<td class="num diff" data-diff="{"" if r["difference"] is None else r["difference"]}">'
            f"{_signed(r['difference'])}</td></tr>"
        )
    params = "".join(
        f'<tr data-stage="{escape(p["stage"])}" data-param="{escape(p["param"])}"><td>{escape(p["stage"])}</td>'
        f"<td>{escape(p['param'])}</td><td>{escape(str(p['a']))}</td><td>{escape(str(p['b']))}</td></tr>"
        for p in data["params"]
    )
    body = (
        f'<h1>{title}</h1>{form}<p class="meta">A: <code>{escape(a)}</code> · B: <code>{escape(b)}</code></p>'
        '<h2>Counts</h2><table id="compare-counts"><thead><tr><th>stage</th><th></th><th>kind</th><th>A</th><th>B</th>'
        f"<th>B − A</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        "<h2>Parameters that differ</h2>"
        + (
            f'<table id="compare-params"><thead><tr><th>stage</th><th>parameter</th><th>A</th><th>B</th></tr></thead>'
            f"<tbody>{params}</tbody></table>"
            if params
            else '<p class="message" id="same-params">Every stage ran with the same parameters.</p>'
        )
        + _samples("Kept by A, dropped by B", data["kept_by_a_dropped_by_b"], name, a, b, "kept-a")
        + _samples("Kept by B, dropped by A", data["kept_by_b_dropped_by_a"], name, b, a, "kept-b")
    )
    return _page(title, _nav(name) + body)


def _signed(value: int | None) -> str:
    return "" if value is None else f"{value:+,}"


def _count_cell(value: int | None, link: str, side: str) -> str:
    if value is None:
        return f'<td class="num" data-side="{side}">—</td>'
    text = charts.number(value)
    if link and value:
        text = f'<a href="{escape(link)}">{text}</a>'
    return f'<td class="num" data-side="{side}" data-value="{value}">{text}</td>'


def _samples(title: str, rows: list[dict], name: str, keeps: str, drops: str, element_id: str) -> str:
    if not rows:
        return f'<h2>{escape(title)}</h2><p class="message">None found.</p>'
    items = "".join(
        f'<tr data-id="{escape(r["id"])}"><td>{escape(r["id"])}</td><td>{escape(r["stage"])}</td><td>{escape(r["reason"])}'
        f"{': ' + escape(r['detail']) if r['detail'] else ''}</td>"
        f'<td><a href="{escape(document_href(name, keeps, r["id"], r["part"]))}">kept</a> · '
        f'<a href="{escape(document_href(name, drops, r["id"], r["part"]))}">dropped</a></td></tr>'
        for r in rows
    )
    return (
        f'<h2>{escape(title)}</h2><table id="{element_id}"><thead><tr><th>document</th><th>stage</th><th>why dropped</th>'
        f"<th>in each run</th></tr></thead><tbody>{items}</tbody></table>"
    )
