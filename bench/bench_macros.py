"""The pure-SQL macros (what a plain DuckDB client runs) against saedb's Python UDFs (what a
saedb process runs under the same names), on the same database file and rows, in one run:

1. sae_encode over N documents (k=32, n=1024, wordllama 256-d): macro vs UDF;
2. one steered search over the corpus (steer_many in ORDER BY): macro vs UDF.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ASTRO, LIMIT, best_of, report  # noqa: E402
from saedb.backends import connect  # noqa: E402
from saedb.embedders import get_embedder  # noqa: E402
from saedb.loaders import load_corpus  # noqa: E402
from saedb.models import publish_model  # noqa: E402
from saedb.sae import SAE  # noqa: E402

def main(documents: int = LIMIT or 5000, encoded: int = min(500, LIMIT or 500)) -> None:
    with tempfile.TemporaryDirectory() as folder, connect(str(Path(folder) / "macros.duckdb")) as backend:
        load_corpus(backend, ASTRO, get_embedder(), limit=documents, progress=False)
        dim = backend.require_embedder()[1]
        model = publish_model(backend, SAE.random(dim, 1024, 32, seed=1), "bench")
        catalog = backend.query("SELECT current_database()")[0][0]
        rows = f"FROM embeddings WHERE doc_id <= {encoded}"
        query = get_embedder().embed(["dark matter halos in cosmological simulations"])[0]
        literal = "[" + ", ".join(f"{v:.9g}" for v in query) + f"]::FLOAT[{dim}]"

        def encode(prefix: str) -> None:
            backend.query(f"SELECT {prefix}sae_encode(embedding, {model}) {rows}")

        def steered(prefix: str) -> list:
            return backend.query(f"SELECT doc_id FROM embeddings ORDER BY array_cosine_distance(embedding, "
                                 f"{prefix}steer_many({literal}, [5, 9], [0.8, -0.4], {model})) LIMIT 10")

        assert steered("") == steered(f"{catalog}.main."), "the macro and the UDF rank alike"
        udf = best_of(lambda: encode(""))
        macro = best_of(lambda: encode(f"{catalog}.main."), repeats=1)
        report(f"sae_encode of {encoded} documents, UDF (baseline)", udf * 1000, "ms")
        report(f"sae_encode of {encoded} documents, pure-SQL macro", macro * 1000, "ms", udf * 1000)
        udf = best_of(lambda: steered(""), repeats=5)
        macro = best_of(lambda: steered(f"{catalog}.main."), repeats=5)
        report(f"steered search over {documents} documents, UDF (baseline)", udf * 1000, "ms")
        report(f"steered search over {documents} documents, pure-SQL macro", macro * 1000, "ms", udf * 1000)

if __name__ == "__main__":
    main()
