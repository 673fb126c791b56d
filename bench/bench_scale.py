"""The whole pipeline at 100k and 1M documents on the embedded default (DuckDB), one
process per stage: wall time and peak memory (max RSS) of each, and the 1M / 100k ratio.

Synthetic corpus (the issue allows it): document i copies the text and metadata of real
paper i mod 125,376 (hh_astro + hh_ml; a smaller corpus takes every n-th paper) under a new id, and its vector is that paper's
MiniLM vector plus Gaussian noise (sigma 0.02 per dimension, cosine about 0.93 to the
original), renormalised. 90% is loaded first; the SAE is trained on it and published;
the last 10% arrives later and is encoded incrementally.

Stages: load (90%), train (streamed from the database, chunks of ``--chunk-rows``),
write-back (publish weights + codes of every document), load-new (10%), encode (codes of
the new documents only), label (offline labeller, the families' input), co-occurrence
(SQL), families (the paper's spanning-tree algorithm over the stored co-occurrence),
analytics (feature_enrichment twice, feature_predictors, feature_slopes; saedb match
depends on the models' widths, not the corpus: bench_lineage.py), search (100 queries, plain and steered, against numpy exact search over the same matrix in
the same process: p50 ratio and recall).

The training budget is a fixed number of optimiser steps (as in the paper), so training
time should not grow with the corpus; memory is bounded by the chunk. Run:
    python bench/bench_scale.py [--scales 100000 1000000] [--steps 2000] [--n 1024] [--k 32]
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, peak_rss_mb  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SOURCES = ("hh_astro", "hh_ml")
EMBEDDER = "minilm-synthetic"  # not an embedder saedb runs: queries are given as vectors
NOISE = 0.02
STAGES = ("load", "train", "write-back", "load-new", "encode", "label", "co-occurrence", "families", "analytics", "search")
EP = "'astro-ph.EP' = ANY(categories)"
CO = "'astro-ph.CO' = ANY(categories) AND NOT 'astro-ph.EP' = ANY(categories)"


# --- the synthetic corpus ------------------------------------------------------------------

def source_papers() -> tuple[list[dict], np.ndarray]:
    """The real papers of both corpora with their MiniLM vectors, in one order."""
    import pyarrow.parquet as pq

    records, vectors = [], []
    for name in SOURCES:
        table = pq.read_table(DATA / f"{name}_minilm.parquet")
        by_id = dict(zip(table.column("id").to_pylist(), range(table.num_rows)))
        matrix = np.asarray(table.column("embedding").combine_chunks().flatten(), dtype=np.float32).reshape(table.num_rows, -1)
        with gzip.open(DATA / f"{name}.jsonl.gz", "rt") as lines:
            for line in lines:
                record = json.loads(line)
                if record.get("id") in by_id:
                    records.append(record)
                    vectors.append(matrix[by_id[record["id"]]])
    return records, np.stack(vectors)


def write_part(folder: Path, name: str, start: int, stop: int, records: list[dict], vectors: np.ndarray, stride: int) -> None:
    """Documents start..stop-1 as ``name``.jsonl.gz and ``name``.parquet; document i copies real
    paper i * ``stride`` (mod their number): a corpus smaller than the papers is spread over all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(start)
    schema = pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float32(), vectors.shape[1]))])
    with gzip.open(folder / f"{name}.jsonl.gz", "wt", compresslevel=1) as out, \
            pq.ParquetWriter(folder / f"{name}.parquet", schema) as writer:
        for lo in range(start, stop, 50_000):
            hi = min(stop, lo + 50_000)
            rows = (np.arange(lo, hi) * stride) % len(records)
            noisy = vectors[rows] + rng.normal(0, NOISE, (hi - lo, vectors.shape[1])).astype(np.float32)
            noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
            ids = [f"syn{i:07d}" for i in range(lo, hi)]
            for doc_id, row in zip(ids, rows):
                out.write(json.dumps({**records[row], "id": doc_id}) + "\n")
            flat = pa.array(noisy.ravel(), pa.float32())
            writer.write_table(pa.table([pa.array(ids), pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])], schema=schema))


def make_corpus(folder: Path, n_docs: int) -> None:
    if (folder / "new.parquet").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    records, vectors = source_papers()
    first, stride = n_docs * 9 // 10, max(1, len(records) // n_docs)
    write_part(folder, "corpus", 0, first, records, vectors, stride)
    write_part(folder, "new", first, n_docs, records, vectors, stride)


# --- one stage, in a child process -------------------------------------------------------

def run_stage(stage: str, folder: Path, args: argparse.Namespace) -> dict:
    from saedb.backends import connect

    url = str(folder / "scale.duckdb")
    if stage in ("load", "load-new"):
        from saedb.loaders import load_corpus

        part = "corpus" if stage == "load" else "new"
        with connect(url) as backend:
            report = load_corpus(backend, folder / f"{part}.jsonl.gz", EMBEDDER, embeddings=folder / f"{part}.parquet",
                                 batch_size=8192, corpus="synthetic", progress=False)
        return {"added": report.added}
    if stage == "train":
        from saedb.interchange import export_sae
        from saedb.trainer import TrainConfig
        from saedb.trainer.train import database_source, train_stream

        cfg = TrainConfig(k=args.k, n_latents=args.n, steps=args.steps, chunk_rows=args.chunk_rows)
        result = train_stream(database_source(lambda: connect(url, read_only=True, statement_timeout_s=0)), cfg)
        export_sae(result.model.to_numpy(), folder / "model", "sparsify")
        (folder / "metrics.json").write_text(json.dumps(result.published_metrics(cfg)))
        return {"loop_s": result.metrics["seconds"],  # the optimiser steps; the rest is reading and the final metrics pass
                **{key: result.metrics[key] for key in ("normalised_mse", "holdout_normalised_mse", "dead_fraction", "samples")}}
    with connect(url) as backend:
        model_id = int(backend.query("SELECT max(model_id) FROM sae_models")[0][0] or 0)
        if stage == "write-back":
            from saedb.interchange import import_sae
            from saedb.models import publish_model

            model_id = publish_model(backend, import_sae(folder / "model"), "scale", json.loads((folder / "metrics.json").read_text()))
            return {"codes": backend.count("sae_codes")}
        if stage == "encode":
            from saedb.encode import encode_new_documents

            report = encode_new_documents(backend, model_id)
            return {"encoded": report.encoded, "without_features": report.without_features}
        if stage == "label":
            from saedb.interp import OfflineLabeller, corpus_stats, run_autointerp

            labeller = OfflineLabeller(corpus_stats(backend))
            return {"labelled": len(run_autointerp(backend, model_id, labeller, concurrency=1))}
        if stage == "co-occurrence":
            from saedb.families import compute_cooccurrence

            return {"pairs": compute_cooccurrence(backend, model_id)}
        if stage == "families":
            from saedb.families import build_families

            return {"families": len(build_families(backend, model_id, with_cooccurrence=False))}
        if stage == "analytics":
            return analytics_stage(backend, model_id)
    return search_stage(url)


def analytics_stage(backend, model_id: int) -> dict:
    """Each comparative analysis once, timed: Fisher enrichment of two categories and of one
    category against the rest, predictors of the primary category, every feature's year slope."""
    from saedb import analytics

    timings = {}
    for name, run in (("enrichment_ep_co_s", lambda: analytics.enrichment(backend, model_id, EP, CO)),
                      ("enrichment_ep_rest_s", lambda: analytics.enrichment(backend, model_id, EP)),
                      ("predictors_s", lambda: analytics.predictors(backend, model_id, "categories[1]")),
                      ("slopes_s", lambda: analytics.slopes(backend, model_id, "year"))):
        start = time.perf_counter()
        rows = run().num_rows
        timings[name] = round(time.perf_counter() - start, 2)
        timings[name[:-2] + "_rows"] = rows
    return timings


def search_stage(url: str, n_queries: int = 100, strength: float = 0.6) -> dict:
    """saedb.search (cold first query, then p50 plain and steered after one untimed pass over the
    queries, as every peer is timed warm) against numpy exact top-10."""
    from saedb.backends import connect
    from saedb.search import Steering, search

    with connect(url, read_only=True, statement_timeout_s=0) as backend:  # it reads every embedding for the truth
        model_id = int(backend.query("SELECT max(model_id) FROM sae_models")[0][0])
        sae = backend.load_sae(model_id)
        rng = np.random.default_rng(0)
        low, high, _ = backend.embedding_span()
        picked = [int(d) for d in rng.integers(low, high + 1, n_queries)]
        queries = [backend.embedding_range(d, d + 1)[1][0] + rng.normal(0, 0.05, sae.d).astype(np.float32) for d in picked]
        queries = [q / np.linalg.norm(q) for q in queries]
        features = [int(sae.encode(q[None, :]).indices[0, 0]) for q in queries]  # a feature active in the query
        started = time.perf_counter()
        search(backend, queries[0], 10)
        cold = time.perf_counter() - started
        found, seconds = {"plain": [], "steered": []}, {"plain": [], "steered": []}
        for kind in found:
            steerings = [[Steering("feature", f, strength, model_id, "add")] if kind == "steered" else [] for f in features]
            for q, steering in zip(queries, steerings):  # one untimed pass: the index's pages come in (numpy's are in memory)
                search(backend, q, 10, steering)
            for q, steering in zip(queries, steerings):
                started = time.perf_counter()
                hits = search(backend, q, 10, steering)
                seconds[kind].append(time.perf_counter() - started)
                found[kind].append([h.doc_id for h in hits])
        ids, matrix = zip(*backend.iter_embeddings(65_536))
    doc_ids, unit = np.concatenate(ids), np.concatenate(matrix)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    exact_seconds, recall = [], {"plain": [], "steered": []}
    for kind in found:
        for q, f, hits in zip(queries, features, found[kind]):
            target = sae.steer(q, f, strength)[0] if kind == "steered" else q
            started = time.perf_counter()
            sims = unit @ (target / np.linalg.norm(target))
            best = np.argpartition(-sims, 10)[:10]
            truth = doc_ids[best[np.argsort(-sims[best])]]
            exact_seconds.append(time.perf_counter() - started)
            recall[kind].append(len(set(truth.tolist()) & set(hits)) / 10)
    ms = lambda values: float(np.median(values)) * 1000  # noqa: E731
    return {"cold_first_query_ms": cold * 1000, "numpy_exact_p50_ms": ms(exact_seconds),
            **{f"{kind}_p50_ms": ms(seconds[kind]) for kind in found},
            **{f"{kind}_p99_ms": float(np.quantile(seconds[kind], 0.99)) * 1000 for kind in found},
            **{f"{kind}_recall": float(np.mean(recall[kind])) for kind in found}}


# --- the driver ---------------------------------------------------------------------------

def measure(stage: str, folder: Path, args: argparse.Namespace) -> dict:
    """Run one stage in a fresh interpreter: its wall time and peak memory, both measured in the child."""
    command = [sys.executable, __file__, "--stage", stage, "--folder", str(folder),
               "--steps", str(args.steps), "--n", str(args.n), "--k", str(args.k), "--chunk-rows", str(args.chunk_rows)]
    child = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if child.returncode:
        raise SystemExit(f"stage {stage} failed ({child.returncode}): {child.stdout[-2000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--chunk-rows", type=int, default=131_072)
    parser.add_argument("--folder", type=Path, help="work folder (default: a temporary one, removed after)")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        started = time.perf_counter()
        result = run_stage(args.stage, args.folder, args)
        print(json.dumps({**result, "wall_s": time.perf_counter() - started, "peak_mb": peak_rss_mb()}))
        return
    with tempfile.TemporaryDirectory(dir=args.folder) as temporary:
        results: dict[int, dict[str, dict]] = {}
        for n_docs in args.scales:
            folder = Path(temporary) / f"scale-{n_docs}"
            started = time.perf_counter()
            make_corpus(folder, n_docs)
            print(f"{n_docs:,} documents: synthetic corpus written in {time.perf_counter() - started:.0f} s", flush=True)
            results[n_docs] = {}
            for stage in STAGES:
                results[n_docs][stage] = measure(stage, folder, args)
                print(f"  {stage:<14} {json.dumps(results[n_docs][stage])}", flush=True)
        print_table(results, args)


def print_table(results: dict[int, dict[str, dict]], args: argparse.Namespace) -> None:
    small, large = min(results), max(results)
    print(f"\nSAE n={args.n} k={args.k}, {args.steps} steps of 1024, chunks of {args.chunk_rows:,} rows; "
          f"ratio = {large:,} / {small:,} documents ({large / small:.0f}x)")
    print(f"{'stage':<14} {'wall s':>10} {'wall s':>10} {'ratio':>7} {'peak MB':>10} {'peak MB':>10} {'ratio':>7}")
    for stage in STAGES:
        a, b = results[small][stage], results[large][stage]
        print(f"{stage:<14} {a['wall_s']:>10.1f} {b['wall_s']:>10.1f} {b['wall_s'] / a['wall_s']:>7.2f} "
              f"{a['peak_mb']:>10.0f} {b['peak_mb']:>10.0f} {b['peak_mb'] / a['peak_mb']:>7.2f}")
    s = results[large]["search"]
    print(f"search at {large:,}: plain p50 {s['plain_p50_ms']:.1f} ms, steered p50 {s['steered_p50_ms']:.1f} ms "
          f"(target <= 150 ms), ratio to numpy exact {s['steered_p50_ms'] / s['numpy_exact_p50_ms']:.2f}, "
          f"recall {s['plain_recall']:.2f} / {s['steered_recall']:.2f}")


if __name__ == "__main__":
    main()
