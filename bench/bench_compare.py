"""`saedb diff`'s example comparisons on the whole corpora, on DuckDB and Postgres, against
scipy: hh_ml (38,116 MiniLM vectors, 1993-2017) year < 2012 vs year >= 2016 and cs.LG vs stat.ML, hh_astro
(87,260) astro-ph.EP vs astro-ph.CO. One SAE per corpus (k=32, n=3072, trained on DuckDB and
published with the same weights on Postgres). Prints, per comparison and backend: seconds, the
largest |p - scipy| and |q - scipy| over every feature, the features at q < 0.05 and the most
over-represented ones with a title each fires on hardest; and whether the backends agree.

    python bench/bench_compare.py [--steps 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
from scipy.stats import false_discovery_control, fisher_exact

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import DATA, cached, corpus_file  # noqa: E402
from saedb import analytics  # noqa: E402
from saedb.backends import connect  # noqa: E402
from saedb.loaders import load_corpus  # noqa: E402
from saedb.localpg import local_postgres  # noqa: E402
from saedb.models import publish_model  # noqa: E402
from saedb.trainer import TrainConfig  # noqa: E402
from saedb.trainer.train import train_from_db  # noqa: E402

COMPARISONS = {
    "hh_ml": [("year < 2012", "year >= 2016"), ("'cs.LG' = ANY(categories)", "'stat.ML' = ANY(categories) AND NOT 'cs.LG' = ANY(categories)")],
    "hh_astro": [("'astro-ph.EP' = ANY(categories)", "'astro-ph.CO' = ANY(categories) AND NOT 'astro-ph.EP' = ANY(categories)")],
}


def corpus_database(corpus: str, steps: int) -> tuple[str, int]:
    """The corpus with its MiniLM vectors in a cached DuckDB file, and one SAE over it."""
    path = cached(f"compare_{corpus}")
    with connect(path) as backend:
        load_corpus(backend, corpus_file(DATA / f"{corpus}.jsonl.gz"), "minilm", embeddings=DATA / f"{corpus}_minilm.parquet",
                    progress=False)
        name = f"compare-{steps}"
        model = backend.query("SELECT max(model_id) FROM sae_models WHERE name = ?", (name,))[0][0]
        if model is None:
            model, _ = train_from_db(backend, TrainConfig(k=32, n_latents=3072, steps=steps), name)
    return path, int(model)


def check(backend, model: int, a: str, b: str) -> tuple[list[dict], str]:
    start = time.perf_counter()
    rows = analytics.enrichment(backend, model, a, b).to_pylist()
    seconds = time.perf_counter() - start
    scipy_p = [fisher_exact([[r["a_docs"], r["a_total"] - r["a_docs"]], [r["b_docs"], r["b_total"] - r["b_docs"]]]).pvalue
               for r in rows]
    p_error = max(abs(r["p_value"] - p) for r, p in zip(rows, scipy_p))
    q_error = float(np.max(np.abs(false_discovery_control(scipy_p) - np.array([r["q_value"] for r in rows]))))
    top = [r for r in rows if r["log_odds"] > 0][:3]
    titles = []
    for r in top:
        title = backend.query("SELECT title FROM feature_top_documents WHERE model_id = ? AND feature_id = ? AND rank = 1",
                              (model, r["feature_id"]))[0][0]
        titles.append(f"#{r['feature_id']} x{np.exp(r['log_odds']):.1f} \"{title[:60]}\"")
    line = (f"{seconds:6.2f} s  A {rows[0]['a_total']:>6}  B {rows[0]['b_total']:>6}  max |p - scipy| {p_error:.1e}  "
            f"max |q - scipy| {q_error:.1e}  q<0.05: {sum(r['q_value'] < 0.05 for r in rows):>4} of {len(rows)}\n"
            f"           most over-represented: {'; '.join(titles)}")
    return rows, line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="saedb-compare-") as directory:
        Path(directory).chmod(0o755)
        with local_postgres(Path(directory) / "data") as server:
            for corpus, comparisons in COMPARISONS.items():
                path, model = corpus_database(corpus, args.steps)
                with psycopg.connect(server, autocommit=True) as admin:  # one database per corpus: one embedder each
                    admin.execute(f"CREATE DATABASE {corpus}")
                with connect(path) as duck, connect(server.replace("/postgres?", f"/{corpus}?")) as pg:
                    load_corpus(pg, corpus_file(DATA / f"{corpus}.jsonl.gz"), "minilm", embeddings=DATA / f"{corpus}_minilm.parquet",
                                progress=False)
                    pg_model = publish_model(pg, duck.load_sae(model), f"compare-{corpus}")
                    for a, b in comparisons:
                        print(f"\n{corpus}: A = {a}   B = {b}")
                        results = {}
                        for backend, model_id in ((duck, model), (pg, pg_model)):
                            results[backend.dialect], line = check(backend, model_id, a, b)
                            print(f"  {backend.dialect:<9}{line}")
                        by_feature = [sorted(rows, key=lambda r: r["feature_id"]) for rows in results.values()]
                        worst = max(abs(x[c] - y[c]) for x, y in zip(*by_feature) for c in ("p_value", "q_value", "log_odds"))
                        print(f"  backends: {len(by_feature[0])} rows each, largest difference {worst:.1e}")


if __name__ == "__main__":
    main()
