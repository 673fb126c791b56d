"""One Postgres server beside a local Citus cluster (`saedb cluster`: a coordinator and 2, then
4 workers on 127.0.0.1), the same documents and model on each, in one run: load, train-read,
write-back, search (plain and steered: p50 and recall against numpy exact) and analytics
(feature_enrichment), each printed as a ratio cluster / one server.

On a machine with 2 cores the cluster cannot be faster: every node shares the same cores and
disk, so the ratios are the cluster's overhead (routing, shards, a coordinator hop) and how it
grows with the number of workers; the gain of more machines is not measured here.

Corpus: bench_scale's synthetic one (real papers under new ids, MiniLM vectors plus noise);
model: a random SAE of the given shape (timings only: features need not mean anything here,
and training would time the trainer, not the database). Run:
    python bench/bench_cluster.py [--docs 1000000] [--workers 2 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_foundation import fresh_database  # noqa: E402
from bench.bench_scale import EMBEDDER, make_corpus, search_stage  # noqa: E402
from bench.common import best_of  # noqa: E402
from saedb.analytics import enrichment  # noqa: E402
from saedb.backends import connect  # noqa: E402
from saedb.cluster import LocalCluster  # noqa: E402
from saedb.loaders import load_corpus  # noqa: E402
from saedb.localpg import local_postgres  # noqa: E402
from saedb.models import publish_model  # noqa: E402
from saedb.sae import SAE  # noqa: E402

TIMED = ("load_s", "train_read_s", "write_back_s", "plain_p50_ms", "steered_p50_ms", "enrichment_two_sets_s", "enrichment_vs_rest_s")
# Two disjoint thirds of the documents, and one third against the rest: sets every corpus size has
# (bench_scale compares categories, which a small slice of the synthetic corpus lacks).
SET_A, SET_B = "doc_id % 3 = 0", "doc_id % 3 = 1"
SHOWN = (*TIMED, "plain_recall", "steered_recall")


def measure(url: str, corpus: Path, sae: SAE) -> dict[str, float]:
    """Every figure of one target, on a database of its own."""
    figures: dict[str, float] = {}
    with connect(url) as backend:
        figures["load_s"] = best_of(lambda: load_corpus(backend, corpus / "corpus.jsonl.gz", EMBEDDER, embeddings=corpus / "corpus.parquet",
                                                        batch_size=8192, corpus="synthetic", progress=False), repeats=1)
        figures["train_read_s"] = best_of(lambda: sum(len(ids) for ids, _ in backend.iter_embeddings(65_536)), repeats=1)  # as the trainer streams
        started = time.perf_counter()
        model_id = publish_model(backend, sae, "bench")
        figures["write_back_s"] = time.perf_counter() - started
        figures["enrichment_two_sets_s"] = best_of(lambda: enrichment(backend, model_id, SET_A, SET_B), repeats=1)
        figures["enrichment_vs_rest_s"] = best_of(lambda: enrichment(backend, model_id, SET_A), repeats=1)
    found = search_stage(url)
    return {**figures, **{key: found[key] for key in ("plain_p50_ms", "steered_p50_ms", "plain_recall", "steered_recall")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--k", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        started = time.perf_counter()
        make_corpus(folder / "corpus", args.docs * 10 // 9)  # its first 90% is the loaded part: args.docs documents
        print(f"{args.docs:,} documents written in {time.perf_counter() - started:.0f} s", flush=True)
        sae = SAE.random(384, args.n, args.k, seed=0)
        results: dict[str, dict[str, float]] = {}
        with local_postgres(folder / "pg") as server:
            results["one server"] = measure(fresh_database(server, "cluster_bench"), folder / "corpus", sae)
            print(f"one server: {results['one server']}", flush=True)
        for workers in args.workers:
            nodes = LocalCluster(folder / f"cluster-{workers}", workers)
            try:
                results[f"{workers} workers"] = measure(nodes.start(), folder / "corpus", sae)
            finally:
                nodes.stop()
            print(f"{workers} workers: {results[f'{workers} workers']}", flush=True)
    print_table(results)


def print_table(results: dict[str, dict[str, float]]) -> None:
    base = results["one server"]
    names = list(results)
    print("\n| figure | " + " | ".join(names) + " |")
    print("| --- | " + " | ".join("---" for _ in names) + " |")
    for key in SHOWN:
        cells = [f"{results[name][key]:.3g}" + (f" ({results[name][key] / base[key]:.2f}x)" if key in TIMED and name != "one server"
                                                 else "") for name in names]
        print(f"| {key} | " + " | ".join(cells) + " |")
    print("ratios: cluster / one server, measured in this run on the same cores")


if __name__ == "__main__":
    main()
