"""The release catalog: a FastAPI app that the Airflow api-server mounts under ``/tamis-catalog``.

Pages (``/``, ``/releases/<version>``) and a JSON API beside them (``/api/releases``,
``/api/releases/<version>``, ``.../records``, ``.../sample``, ``.../pipeline.yaml``) show the
same things: every release a reader may see, what it holds and how it was made, a preview of
its records, a sample by filter through its index, the code that loads it, and its pipeline
config to start a new pipeline from.

Who may see a release is the auth manager's decision: the user comes from the api-server's
JWT (the UI's ``_token`` cookie or an ``Authorization: Bearer`` header), and with Airflow's
multi-team mode a release of a team is shown only to the members of that team; a public
release, or one of no team, to every signed-in user. A release a reader may not see answers
404, as one that does not exist.
"""

from __future__ import annotations

import json
import logging
from html import escape
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from tamis import catalog

URL_PREFIX = "/tamis-catalog"
API = "/api"
MAX_ROWS = 50
RESERVED = {"limit"}  # query parameters of the sample that are not filters

app = FastAPI(title="tamis release catalog", docs_url=None, redoc_url=None, openapi_url=None)
_bearer = HTTPBearer(auto_error=False)
log = logging.getLogger(__name__)


class LoginRequired(Exception):
    pass


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith(URL_PREFIX + API) or request.url.path.startswith(API)


@app.exception_handler(LoginRequired)
async def _to_login(request: Request, exc: LoginRequired):
    if _wants_json(request):
        return JSONResponse({"detail": "sign in first (a bearer token from /auth/token)"}, status_code=401)
    from airflow.api_fastapi.app import get_auth_manager

    return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)


@app.exception_handler(StarletteHTTPException)
async def _error(request: Request, exc: StarletteHTTPException):
    if _wants_json(request):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
    body = f'<p class="error">{escape(str(exc.detail))}</p><p><a href="{URL_PREFIX}/">All releases</a></p>'
    return HTMLResponse(_page(str(exc.status_code), body), status_code=exc.status_code)


@app.exception_handler(Exception)
async def _failure(request: Request, exc: Exception):
    log.exception("catalog page %s failed", request.url.path)
    message = f"{type(exc).__name__}: {str(exc)[:500]}"
    if _wants_json(request):
        return JSONResponse({"detail": message}, status_code=500)
    return HTMLResponse(
        _page("500", f'<p class="error">The catalog could not answer: {escape(message)}</p>'), status_code=500
    )


# --------------------------------------------------------------------------- who reads


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


def _teams(user) -> set[str] | None:
    """The teams the user belongs to; None when Airflow runs without teams."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.configuration import conf

    if not conf.getboolean("core", "multi_team", fallback=False):
        return None
    return set(get_auth_manager().get_authorized_teams(user=user, method="GET"))


def _visible(user) -> tuple[list[catalog.Release], list[str]]:
    found, problems = catalog.releases()
    teams = _teams(user)
    return [r for r in found if catalog.readable(r.manifest, teams)], problems


def _release(version: str, user) -> catalog.Release:
    found = catalog.find(version)
    if found is None or not catalog.readable(found.manifest, _teams(user)):
        raise HTTPException(404, f"no release {version!r} that you may read")
    return found


def _filters(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.query_params.items() if k not in RESERVED and v != ""}


def _limit(value: int) -> int:
    return max(1, min(int(value), MAX_ROWS))


# --------------------------------------------------------------------------- JSON API


@app.get(API + "/releases")
def api_releases(user=Depends(_user)):
    found, problems = _visible(user)
    return {"releases": [catalog.summary(r) for r in found], "problems": problems}


@app.get(API + "/releases/{version}")
def api_release(version: str, user=Depends(_user)):
    return catalog.detail(_release(version, user))


@app.get(API + "/releases/{version}/records")
def api_records(version: str, limit: int = 10, user=Depends(_user)):
    return catalog.preview(_release(version, user), _limit(limit))


@app.get(API + "/releases/{version}/sample")
def api_sample(version: str, request: Request, limit: int = 10, user=Depends(_user)):
    release = _release(version, user)
    try:
        return catalog.sample(release, _filters(request), _limit(limit))
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


@app.get(API + "/releases/{version}/pipeline.yaml")
def api_clone(version: str, name: str = "", user=Depends(_user)):
    release = _release(version, user)
    name = name or f"{release.manifest['pipeline']}-clone"
    try:
        text = catalog.clone_yaml(release, name)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    return PlainTextResponse(
        text, media_type="application/yaml", headers={"Content-Disposition": f'attachment; filename="{name}.yaml"'}
    )


# --------------------------------------------------------------------------- pages


@app.get("/", response_class=HTMLResponse)
def releases_page(user=Depends(_user)):
    found, problems = _visible(user)
    rows = []
    for release in found:
        s = catalog.summary(release)
        mix = ", ".join(f"{k} {v:.0%}" for k, v in (s["mixture"] or {}).get("shares", {}).items())
        rows.append(
            f'<tr class="release" data-version="{escape(s["version"])}"><td><a href="{_href(s["version"])}">'
            f"{escape(s['version'])}</a></td><td>{escape(s['name'])}</td><td>{escape(s['team'] or '—')}"
            f"{' (public)' if s['public'] else ''}</td><td>{escape(s['created_at'] or '')}</td>"
            f'<td><code>{escape(s["dvc"]["revision"][:12])}</code></td><td class="num">{_number(s["documents"])}</td>'
            f'<td class="num">{_number(_total_tokens(s["tokens"]))}</td><td class="num">{_bytes(s["bytes"])}</td>'
            f'<td>{escape(mix)}</td><td class="ready">{"ready" if s["ready"] else "not preheated"}</td></tr>'
        )
    notes = "".join(f'<p class="error problem">{escape(p)}</p>' for p in problems)
    if not rows:
        body = '<p class="message" id="no-releases">No release that you may read.</p>'
    else:
        body = (
            '<table id="releases"><thead><tr><th>version</th><th>pipeline</th><th>team</th><th>created</th>'
            "<th>DVC revision</th><th>documents</th><th>tokens</th><th>size</th><th>mixture</th><th>hot copy</th>"
            "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        )
    return _page("Releases", f"<h1>Dataset releases</h1>{notes}{body}")


@app.get("/releases/{version}", response_class=HTMLResponse)
def release_page(version: str, request: Request, limit: int = 10, user=Depends(_user)):
    release = _release(version, user)
    d = catalog.detail(release)
    meta = (
        f'<p class="meta">pipeline <b>{escape(d["name"])}</b> · team <b>{escape(d["team"] or "—")}</b>'
        f"{' · public' if d['public'] else ''} · created {escape(d['created_at'] or '')} · DVC revision "
        f'<code id="dvc-revision">{escape(d["dvc"]["revision"])}</code> · remote <code>{escape(d["dvc"]["remote"])}</code>'
        f' · hot copy <b id="ready">{"ready" if d["ready"] else "not preheated"}</b></p>'
    )
    sections = [
        f"<h1>{escape(version)}</h1>",
        meta,
        _figures(d),
        _stages_table(d),
        _gates_table(d),
        _lineage_section(d),
        _records_section(release, limit),
        _sample_section(release, request, limit),
        _loading_section(d),
        _clone_section(release),
    ]
    return _page(version, "".join(sections), crumbs=True)


@app.get("/releases/{version}/pipeline.yaml")
def clone_page(version: str, name: str = "", user=Depends(_user)):
    return api_clone(version, name, user)


def _figures(d: dict[str, Any]) -> str:
    tokens = "".join(f"<tr><td>{escape(k)}</td><td class=num>{_number(v)}</td></tr>" for k, v in d["tokens"].items())
    mix = d["mixture"]
    mix_rows = ""
    if mix:
        mix_rows = "".join(
            f'<tr data-source="{escape(k)}"><td>{escape(k)}</td><td class=num>{_number(mix["tokens"][k])}</td>'
            f"<td class=num>{v:.1%}</td><td class=num>{_weight(mix['weights'], k)}</td></tr>"
            for k, v in mix["shares"].items()
        )
        mix_rows = (
            f'<h3>Mixture ({escape(mix["stage"])})</h3><table id="mixture"><thead><tr><th>source</th><th>tokens</th>'
            f"<th>share</th><th>weight</th></tr></thead><tbody>{mix_rows}</tbody></table>"
        )
    return (
        f'<h2>Contents</h2><p class="meta">{_number(d["documents"])} documents · {_bytes(d["bytes"])} in '
        f"{d['contents']['files']} files of {', '.join(escape(x) for x in d['contents']['datasets'])}</p>"
        f'<table id="tokens"><thead><tr><th>token count</th><th>value</th></tr></thead><tbody>{tokens}</tbody></table>{mix_rows}'
    )


def _stages_table(d: dict[str, Any]) -> str:
    rows = "".join(
        f'<tr data-stage="{escape(s["stage"])}"><td>{escape(s["stage"])}</td>'
        + "".join(
            f'<td class="num" data-count="{k}">{_number(s["counts"][k])}</td>'
            for k in ("in", "kept", "dropped", "quarantined")
        )
        + f'<td class="num">{_bytes(s["bytes"])}</td><td><details><summary>params</summary><pre>'
        f"{escape(json.dumps(s['params'], indent=1, sort_keys=True))}</pre></details></td></tr>"
        for s in d["stages"]
    )
    return (
        '<h2>How it was made</h2><table id="stages"><thead><tr><th>stage</th><th>in</th><th>kept</th><th>dropped</th>'
        f"<th>quarantined</th><th>size</th><th>parameters</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _gates_table(d: dict[str, Any]) -> str:
    rows = []
    for stage, gate in d["gates"].items():
        verdict = "—" if gate is None else ("passed" if gate["success"] else f"FAILED ({len(gate['failed'])})")
        count = "" if gate is None else gate["evaluated"]
        rows.append(
            f'<tr data-stage="{escape(stage)}"><td>{escape(stage)}</td><td class="gate">{verdict}</td>'
            f'<td class="num">{count}</td></tr>'
        )
    return (
        '<h2>Quality gates</h2><table id="gates"><thead><tr><th>stage</th><th>result</th><th>expectations</th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _lineage_section(d: dict[str, Any]) -> str:
    rows = []
    for name, s in d["lineage"]["sources"].items():
        pinned = f'commit <code class="commit">{escape(s["commit"])}</code>' if s["commit"] else ""
        rejected = f" · {len(s['rejected'])} files refused" if s["rejected"] else ""
        rows.append(
            f'<tr data-source="{escape(name)}"><td>{escape(name)}</td><td>{escape(s["kind"])}</td>'
            f'<td><code>{escape(s["origin"])}</code> {pinned}{rejected}</td><td class="num">{s["files"]}</td>'
            f'<td class="num">{_bytes(s["bytes"])}</td></tr>'
        )
    chain = " → ".join(escape(s["stage"]) for s in d["lineage"]["stages"])
    return (
        '<h2>Lineage</h2><table id="lineage"><thead><tr><th>source</th><th>kind</th><th>origin</th><th>files</th>'
        f'<th>size</th></tr></thead><tbody>{"".join(rows)}</tbody></table><p class="meta">raw files → {chain} → '
        f"<code>{escape(d['lineage']['final'])}</code></p>"
    )


def _records_table(found: dict[str, Any], element_id: str) -> str:
    if not found["rows"]:
        return f'<p class="message" id="{element_id}-none">{escape(found.get("message") or "no record matches")}</p>'
    head = "".join(f"<th>{escape(c)}</th>" for c in found["columns"])
    body = "".join(
        '<tr class="record">'
        + "".join(
            f'<td class="{escape(c)}">{escape("" if r.get(c) is None else str(r[c]))}</td>' for c in found["columns"]
        )
        + "</tr>"
        for r in found["rows"]
    )
    return f'<table id="{element_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _records_section(release: catalog.Release, limit: int) -> str:
    found = catalog.preview(release, _limit(limit))
    where = f" (read from the {found['read_from']} copy)" if found.get("read_from") else ""
    return f"<h2>Records{where}</h2>" + _records_table(found, "preview")


def _sample_section(release: catalog.Release, request: Request, limit: int) -> str:
    filters = _filters(request)
    try:
        found = catalog.sample(release, filters, _limit(limit))
    except ValueError as exc:
        found = {"rows": [], "columns": [], "message": str(exc), "filterable": list(filters)}
    fields = "".join(
        f'<label>{escape(c)} <input name="{escape(c)}" value="{escape(filters.get(c, ""))}" size="14"></label> '
        for c in found.get("filterable", [])
    )
    form = f'<form method="get" id="sample-form">{fields}<button type="submit">Sample</button></form>' if fields else ""
    where = (
        f'<p class="meta">through the index: <code>{escape(found["where"])}</code></p>' if found.get("where") else ""
    )
    return "<h2>Sample by filter</h2>" + form + where + _records_table(found, "sample")


def _loading_section(d: dict[str, Any]) -> str:
    titles = {
        "datasets": "Hugging Face datasets",
        "pytorch": "PyTorch (tamis.loader)",
        "megatron": "Megatron .bin/.idx",
        "numpy": "The .bin/.idx with numpy alone",
    }
    blocks = "".join(
        f'<h3>{titles[k]}</h3><pre class="code" data-kind="{k}">{escape(v)}</pre>' for k, v in d["loading"].items()
    )
    note = (
        ""
        if d["ready"]
        else (
            '<p class="message">The paths are those of the hot copy, there once the release is preheated; '
            "the PyTorch loader reads the store until then.</p>"
        )
    )
    return f'<h2>Load it</h2>{note}<div id="loading">{blocks}</div>'


def _clone_section(release: catalog.Release) -> str:
    name = f"{release.manifest['pipeline']}-clone"
    action = f"{_href(release.version)}/pipeline.yaml"
    return (
        f'<h2>Start a new pipeline from it</h2><form method="get" action="{action}" id="clone"><label>name '
        f'<input name="name" value="{escape(name)}"></label> <button type="submit">Download pipeline YAML</button></form>'
    )


# --------------------------------------------------------------------------- layout

STYLE = """
body{font-family:system-ui,sans-serif;margin:16px 24px;color:#1a202c;max-width:1150px}
h1{font-size:20px;margin:4px 0 8px} h2{font-size:17px;margin:22px 0 8px;border-bottom:1px solid #e2e8f0} h3{font-size:14px}
table{border-collapse:collapse;font-size:13px;margin:6px 0} th,td{border:1px solid #e2e8f0;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f7fafc} td.num{text-align:right;font-variant-numeric:tabular-nums}
.meta{color:#4a5568;font-size:13px} .message{color:#744210;background:#fffbeb;padding:6px 10px}
.error{color:#9b2c2c;background:#fff5f5;padding:8px 12px} td.text{white-space:pre-wrap;font-size:12px;max-width:560px}
pre.code{background:#f7fafc;border:1px solid #e2e8f0;padding:8px;font-size:12px;overflow-x:auto}
nav{font-size:13px;margin-bottom:6px} form label{margin-right:10px;font-size:13px}
"""


def _page(title: str, body: str, crumbs: bool = False) -> str:
    nav = f'<nav><a href="{URL_PREFIX}/">All releases</a></nav>' if crumbs else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} · tamis</title>'
        f"<style>{STYLE}</style></head><body>{nav}{body}</body></html>"
    )


def _href(version: str) -> str:
    return f"{URL_PREFIX}/releases/{quote(version, safe='')}"


def _number(value) -> str:
    return "" if value is None else f"{value:,}"


def _bytes(value) -> str:
    if value is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return ""


def _total_tokens(tokens: dict[str, int]) -> int | None:
    """The tokens a reader gets: the last stage's count of real (not padding) tokens."""
    plain = [v for k, v in tokens.items() if k.endswith(".tokens")]
    return plain[-1] if plain else None


def _weight(weights, source: str) -> str:
    return "" if not weights or source not in weights else f"{weights[source]:.2f}"
