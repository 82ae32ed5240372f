"""The Grafana dashboard in k8s/: every query is PromQL that parses once Grafana has put in
its variables, reads only the metrics tamis exports, all six of them, filtered and grouped
by pipeline and stage."""

from __future__ import annotations

import json
import re

import promql_parser
import yaml

from conftest import REPO
from tamis.metrics import METRICS

DASHBOARD = REPO / "k8s" / "grafana-dashboard.json"
# What Grafana puts in for its own variables before a query reaches Prometheus.
GRAFANA_BUILT_INS = {"__rate_interval": "5m", "__interval": "1m", "__range": "7d"}
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # panels folded into a row
    return [p for p in out if p["type"] != "row"]


def variables() -> dict[str, dict]:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}


def interpolate(query: str) -> str:
    """The query as Grafana sends it, each dashboard variable standing for ``__var_<name>__``."""

    def value(match: re.Match) -> str:
        name = match["name"] or match["braced"]
        if name in GRAFANA_BUILT_INS:
            return GRAFANA_BUILT_INS[name]
        assert name in variables(), f"{query!r} uses ${name}, which the dashboard does not define"
        return f"__var_{name}__"

    return re.sub(r"\$(?:\{(?P<braced>\w+)\}|(?P<name>\w+))", value, query)


def walk(node):
    yield node
    for attribute in ("lhs", "rhs", "expr", "vector_selector", "param"):
        child = getattr(node, attribute, None)
        if child is not None and not isinstance(child, (str, int, float)):
            yield from walk(child)
    for child in getattr(node, "args", None) or []:
        yield from walk(child)


def selectors(ast) -> list:
    return [n for n in walk(ast) if isinstance(n, promql_parser.VectorSelector)]


def test_every_panel_query_parses_and_reads_tamis_metrics_by_pipeline_and_stage():
    used = set()
    for panel in panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            ast = promql_parser.parse(interpolate(target["expr"]))  # raises on what Prometheus would refuse
            found = selectors(ast)
            assert found, panel["title"]
            for selector in found:
                assert selector.name in METRICS, (panel["title"], selector.name)
                matchers = {(m.name, str(m.op), m.value) for m in selector.matchers.matchers}
                # The dashboard's pipeline and stage pickers filter every series.
                assert {
                    ("pipeline", "MatchOp.Re", "__var_pipeline__"),
                    ("stage", "MatchOp.Re", "__var_stage__"),
                } <= matchers
                used.add(selector.name)
            groupings = [n for n in walk(ast) if isinstance(n, promql_parser.AggregateExpr)]
            assert groupings and all(
                g.modifier is not None
                and str(g.modifier.type).endswith("By")
                and set(g.modifier.labels) == {"pipeline", "stage"}
                for g in groupings
            ), (panel["title"], target["expr"])
            assert {"{{pipeline}}", "{{stage}}"} <= set(re.findall(r"\{\{\w+\}\}", target["legendFormat"]))
    assert used == set(METRICS)


def test_the_pickers_list_pipelines_and_stages_from_a_tamis_metric():
    picked = {}
    for name, variable in variables().items():
        if variable["type"] != "query":
            continue
        match = LABEL_VALUES.match(variable["query"]["query"])
        assert match, variable["query"]
        ast = promql_parser.parse(interpolate(match["selector"]))
        assert {s.name for s in selectors(ast)} <= set(METRICS)
        picked[name] = match["label"]
        assert variable["multi"] and variable["includeAll"] and variable["allValue"] == ".*"
    assert picked == {"pipeline": "pipeline", "stage": "stage"}
    assert variables()["datasource"]["query"] == "prometheus"


def test_panels_have_unique_ids_and_fit_the_grid():
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in panels():
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        cell = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cell & cells, f"{panel['title']} overlaps another panel"
        cells |= cell


def test_the_kustomization_ships_the_dashboard_to_grafana():
    kustomization = yaml.safe_load((REPO / "k8s" / "kustomization.yaml").read_text())
    (generator,) = [g for g in kustomization["configMapGenerator"] if "grafana-dashboard.json" in g["files"]]
    assert generator["options"]["labels"] == {"grafana_dashboard": "1"}
