"""Apache Superset over saedb's BI views: register a database, one dataset and one chart per
view, and read every chart back through Superset's chart-data API.

Runs under Superset's own Python (``scripts/install-superset.sh`` prints it), never saedb's:

    $(scripts/install-superset.sh) scripts/superset_views.py --home /tmp/superset \\
        --uri 'duckdb+saedb:////path/to/saedb.duckdb' --read-only --schema main
    ... --uri 'postgresql://superset:PASSWORD@127.0.0.1:5432/saedb' --schema public

A DuckDB file goes through saedb's dialect (``duckdb+saedb://``: duckdb-engine cannot reflect a
table for a dataset under DuckDB 2.0); Postgres through a ``saedb reader`` login. ``--home``
holds Superset's metadata database (created with an admin login on first use; ``--init-only``
stops there). Prints one JSON object: for each view, the chart's columns and rows as Superset
returned them, so a caller can compare them with the same query sent to saedb.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ADMIN = {"username": "admin", "password": "admin", "provider": "db", "refresh": False}

# One chart per BI view: a table chart, either the view's rows (raw) or an aggregate by one column.
# Each is a query a dashboard would ask: the busiest features, activity by year, the top documents,
# feature counts over document rows, density per model, labels per labeller.
CHARTS: dict[str, dict] = {
    "feature_summary": {"columns": ["feature_id", "n_docs"], "orderby": [["n_docs", False], ["feature_id", True]],
                        "row_limit": 10},
    "feature_trends": {"groupby": ["year"], "metric": ("SUM", "n_docs")},
    "feature_top_documents": {"columns": ["feature_id", "doc_id", "activation"], "filters": [["rank", "==", 1]],
                              "orderby": [["feature_id", True]], "row_limit": 10},
    "document_features": {"groupby": ["feature_id"], "metric": ("COUNT", "doc_id")},
    "feature_stats": {"groupby": ["model_id"], "metric": ("MAX", "n_docs")},
    "feature_best_labels": {"groupby": ["labeller"], "metric": ("COUNT", "feature_id")},
}


def configure(home: Path) -> None:
    """Point Superset at a config in ``home`` (metadata in SQLite there; CSRF off for the API client)."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "superset_config.py"
    config.write_text(
        'SECRET_KEY = "saedb-superset-check-only-not-a-secret"\n'
        f'SQLALCHEMY_DATABASE_URI = "sqlite:///{home / "superset.db"}"\n'
        "WTF_CSRF_ENABLED = False\n"
    )
    os.environ["SUPERSET_CONFIG_PATH"] = str(config)
    os.environ["FLASK_APP"] = "superset"
    os.environ["SUPERSET_HOME"] = str(home)


def initialise(home: Path) -> None:
    """Superset's metadata database and an admin login: its own commands, once per home."""
    if (home / "superset.db").exists():
        return
    superset = str(Path(sys.executable).parent / "superset")
    for command in (["db", "upgrade"], ["init"],
                    ["fab", "create-admin", "--username", "admin", "--firstname", "saedb", "--lastname", "check",
                     "--email", "admin@localhost", "--password", "admin"]):
        done = subprocess.run([superset, *command], capture_output=True, text=True)
        if done.returncode != 0:
            (home / "superset.db").unlink(missing_ok=True)
            raise SystemExit(f"superset {' '.join(command[:2])} failed: {done.stderr[-2000:]}")


def query_of(view: str, spec: dict) -> dict:
    """The chart's query in Superset's query-context form."""
    query: dict = {"filters": [{"col": c, "op": op, "val": v} for c, op, v in spec.get("filters", [])],
                   "row_limit": spec.get("row_limit", 1000)}
    if "metric" in spec:
        aggregate, column = spec["metric"]
        metric = {"expressionType": "SIMPLE", "aggregate": aggregate, "column": {"column_name": column},
                  "label": f"{aggregate}({column})"}
        query |= {"columns": spec["groupby"], "metrics": [metric], "orderby": [[spec["groupby"][0], True]]}
    else:
        query |= {"columns": spec["columns"], "metrics": [], "orderby": spec["orderby"]}
    return query


def run(uri: str, schema: str, read_only: bool) -> dict:
    from superset.app import create_app

    app = create_app()
    client = app.test_client()

    def call(method: str, path: str, body: dict | None = None) -> dict:
        response = client.open(path, method=method, json=body, headers=headers)
        if response.status_code >= 400:
            raise SystemExit(f"{method} {path}: HTTP {response.status_code}: {response.get_data(as_text=True)[:2000]}")
        return response.get_json()

    headers: dict = {}
    headers["Authorization"] = "Bearer " + call("POST", "/api/v1/security/login", ADMIN)["access_token"]
    extra = {"engine_params": {"connect_args": {"read_only": True}}} if read_only else {}
    database = call("POST", "/api/v1/database/", {"database_name": f"saedb {schema} {os.getpid()}", "sqlalchemy_uri": uri,
                                                  "expose_in_sqllab": True, "extra": json.dumps(extra)})["id"]
    charts = {}
    for view, spec in CHARTS.items():
        dataset = call("POST", "/api/v1/dataset/", {"database": database, "schema": schema, "table_name": view})["id"]
        query_context = {"datasource": {"id": dataset, "type": "table"}, "queries": [query_of(view, spec)],
                         "result_format": "json", "result_type": "full"}
        chart = call("POST", "/api/v1/chart/", {
            "slice_name": f"saedb {view}", "viz_type": "table", "datasource_id": dataset, "datasource_type": "table",
            "params": json.dumps({"viz_type": "table", "datasource": f"{dataset}__table"}),
            "query_context": json.dumps(query_context)})["id"]
        result = call("GET", f"/api/v1/chart/{chart}/data/")["result"][0]
        charts[view] = {"chart": chart, "colnames": result["colnames"], "rows": result["data"]}
    return charts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="Superset's home: config and metadata database")
    parser.add_argument("--uri", help="SQLAlchemy URI of the saedb database")
    parser.add_argument("--schema", default="main", help="schema of the views (DuckDB: main, Postgres: public)")
    parser.add_argument("--read-only", action="store_true", help="open a DuckDB file read-only")
    parser.add_argument("--init-only", action="store_true", help="create the home's metadata and stop")
    args = parser.parse_args()
    configure(args.home)
    initialise(args.home)
    if not args.init_only:
        print(json.dumps(run(args.uri, args.schema, args.read_only), default=str))


if __name__ == "__main__":
    main()
