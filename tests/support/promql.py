"""What the operator exports (read from metrics.py's source) and which metrics a PromQL expression names."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from tests.support.tools import REPO

METRICS_MODULE = REPO / "operator" / "fedtask_operator" / "kube" / "metrics.py"
DASHBOARD = REPO / "dashboards" / "fedtask.json"
# Series Prometheus itself attaches to every scrape target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
# Sample names prometheus-client exposes for a metric created as Kind("name", ...).
SUFFIXES = {"Counter": ("_total", "_created"), "Gauge": ("",), "Histogram": ("_bucket", "_count", "_sum", "_created"),
            "Summary": ("", "_count", "_sum", "_created"), "Info": ("_info",), "Enum": ("",)}
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "count_over_time", "day_of_month", "day_of_week", "delta", "deriv", "exp", "floor", "histogram_quantile",
    "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace", "last_over_time", "ln",
    "log2", "log10", "max_over_time", "min_over_time", "minute", "month", "predict_linear", "quantile_over_time",
    "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "stddev_over_time", "sum_over_time",
    "time", "timestamp", "vector", "year",
    # aggregation operators
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile",
}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right",
            "inf", "nan"}
GRAFANA_VARIABLES = {"$namespace": ".*", "$task": ".*", "$__rate_interval": "15s", "${datasource}": ""}


def exported_metrics(source: Path = METRICS_MODULE) -> dict[str, str]:
    """{metric name as created: prometheus-client kind}, from Kind("full_name", ...) calls in metrics.py."""
    found = {}
    for node in ast.walk(ast.parse(source.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in SUFFIXES
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found[node.args[0].value] = node.func.id
    return found


def exported_sample_names(metrics: dict[str, str]) -> set[str]:
    names = set()
    for name, kind in metrics.items():
        base = name.removesuffix("_total") if kind == "Counter" else name
        names |= {base + suffix for suffix in SUFFIXES[kind]}
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords, labels, durations and strings left out)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    text = re.sub(r"#[^\n]*", " ", text)  # comments
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if word.lower() in KEYWORDS:
            continue
        if call:
            if word not in FUNCTIONS:
                raise ValueError(f"{expr!r}: unknown function {word}()")
        else:
            names.add(word)
    return names


def substitute_grafana_variables(expr: str, values: dict[str, str] = GRAFANA_VARIABLES) -> str:
    for variable, value in values.items():
        expr = expr.replace(variable, value)
    return expr


def dashboard_queries(dashboard: dict | None = None) -> dict[str, str]:
    """{"panel title / refId": expr} for every PromQL target of every panel."""
    dashboard = dashboard or json.loads(DASHBOARD.read_text())
    queries = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries[f"{panel['title']} / {target['refId']}"] = target["expr"]
    return queries


def dashboard_variable_metrics(dashboard: dict | None = None) -> dict[str, tuple[str, str]]:
    """{variable: (metric selector, label)} of the label_values(...) template variables."""
    dashboard = dashboard or json.loads(DASHBOARD.read_text())
    found = {}
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query or "")
        if match:
            found[variable["name"]] = (match.group(1), match.group(2))
    return found
