"""Load a corpus file into a saedb database: validate, embed, bulk-insert in batches.

Vectors come from the embedder, or from a file of embeddings made elsewhere
(``embeddings=``, see ``saedb.loaders.vectors``); then the embedder only names what made
them (the database records it, so queries are embedded the same way) and, when it can run
here, is checked against a sample of the file's vectors before anything is written.

Idempotent: papers already in the database (by arXiv id) are skipped before embedding,
so a re-run adds nothing. Resumable: each batch commits on its own, so after a kill the
next run carries on from the last committed batch.
"""

from __future__ import annotations

import itertools
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from saedb.backends import Backend, DocumentBatch
from saedb.embedders import Embedder, get_embedder, known_dim, runnable_here
from saedb.encode import encode_every_model
from saedb.errors import ConfigurationError, InvalidInputError, require_at_least_one
from saedb.iterate import chunked
from saedb.loaders.corpus import Paper, RowError, check_source, ignored_columns, read_papers
from saedb.loaders.vectors import PrecomputedEmbeddings, read_embeddings

SAMPLE_CHECK = 4  # papers re-embedded to check that a file's vectors come from the named embedder
SAMPLE_MIN_COSINE = 0.9


@dataclass
class LoadReport:
    source: str
    read: int = 0
    added: int = 0
    already_loaded: int = 0
    duplicates: int = 0
    rejected: int = 0
    unmatched_vectors: int | None = None  # vectors in an embeddings file with no paper in this load
    ignored_columns: list[str] = field(default_factory=list)  # columns of the file saedb does not read
    first_errors: list[RowError] = field(default_factory=list)
    models_encoded: list[int] = field(default_factory=list)  # published models whose codes the load brought up to date
    unread: RowError | None = None  # where the file could not be read to its end (the rows before it were loaded)

    def summary(self) -> str:
        text = (
            f"{self.source}: read {self.read} valid rows, added {self.added}, "
            f"{self.already_loaded} already loaded, {self.duplicates} duplicate ids in file, {self.rejected} rejected"
        )
        if self.ignored_columns:
            text += f"\n  ignored columns: {', '.join(self.ignored_columns)}"
        if self.models_encoded:
            text += f"\n  codes of model {', '.join(map(str, self.models_encoded))} brought up to date"
        if self.unmatched_vectors:
            text += f"\n  {self.unmatched_vectors} vectors of the embeddings file have no paper in this load"
        for err in self.first_errors:
            text += f"\n  line {err.line}: {err.reason}"
        if self.rejected > len(self.first_errors):
            text += f"\n  ... all {self.rejected} rejected rows are in the load_errors table"
        return text


def corpus_name(path: Path) -> str:
    """'hh_astro.jsonl.gz' -> 'hh_astro'."""
    return re.sub(r"\.(jsonl|json|ndjson|csv|parquet)(\.gz)?$", "", path.name, flags=re.IGNORECASE)


def _embed(embedder: Embedder, papers: list[Paper]) -> np.ndarray:
    vectors = np.asarray(embedder.embed([p.text for p in papers]), dtype=np.float32)
    if vectors.shape != (len(papers), embedder.dim) or not np.isfinite(vectors).all():
        raise InvalidInputError(
            f"embedder {embedder.name} returned {vectors.shape} values (expected {(len(papers), embedder.dim)}, all finite)"
        )
    return vectors


def _unit(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, in float64: a float32 norm of 1e30-scale values overflows to
    inf (the row became all zeros), one of 1e-30-scale values underflows to 0."""
    wide = rows.astype(np.float64)
    return (wide / np.linalg.norm(wide, axis=1, keepdims=True)).astype(np.float32)


def check_sample(embedder: Embedder, papers: list[Paper], vectors: np.ndarray, source: str) -> None:
    """Re-embed the papers: the file's vectors must be the named embedder's (mean cosine >= 0.9)."""
    cosine = float(np.mean(np.sum(_embed(embedder, papers) * _unit(vectors), axis=1)))
    if cosine < SAMPLE_MIN_COSINE:
        raise ConfigurationError(
            f"the vectors in {source} do not come from {embedder.name}: re-embedding {len(papers)} papers gives mean "
            f"cosine {cosine:.2f} with the file's vectors. Pass the embedder that made them (--embedder), or a name "
            "saedb does not run (queries must then be given as vectors)."
        )


def precomputed_vectors(path: Path, embedder: Embedder | str, embeddings: str | Path | PrecomputedEmbeddings) -> tuple[str, PrecomputedEmbeddings]:
    """(embedder name, vectors) for a load of precomputed vectors, checked before anything is
    written: the dimension against the named embedder's, and, when that embedder runs here,
    a re-embedded sample of the corpus against the file."""
    vectors = embeddings if isinstance(embeddings, PrecomputedEmbeddings) else read_embeddings(embeddings)
    name = embedder if isinstance(embedder, str) else embedder.name
    expected = known_dim(name)
    if expected is not None and expected != vectors.dim:
        raise InvalidInputError(f"{vectors.source} holds {vectors.dim}-d vectors but {name} makes {expected}-d ones")
    runnable = embedder if not isinstance(embedder, str) else (get_embedder(name) if runnable_here(name) else None)
    if runnable is not None:
        sample = list(itertools.islice(
            (p for p in read_papers(path) if isinstance(p, Paper) and p.arxiv_id in vectors.index and p.arxiv_id not in vectors.unusable),
            SAMPLE_CHECK,
        ))
        if sample:
            check_sample(runnable, sample, np.stack([vectors.matrix[vectors.index[p.arxiv_id]] for p in sample]), vectors.source)
    return name, vectors


def load_corpus(
    backend: Backend,
    path: str | Path,
    embedder: Embedder | str,
    *,
    embeddings: str | Path | PrecomputedEmbeddings | None = None,
    limit: int | None = None,
    batch_size: int = 1024,
    corpus: str | None = None,
    progress: bool = True,
    encode: bool = True,
) -> LoadReport:
    """Load the first ``limit`` valid papers of ``path`` (all if None) with their embeddings:
    computed by ``embedder``, or read from ``embeddings`` (made by the embedder so named).
    Then every published model's codes are brought up to the table, in numpy batches (on Postgres
    the insert trigger's per-row encode is deferred to them; a rerun of an interrupted load
    finishes them). With ``encode`` False the database's own rule holds: Postgres's trigger
    encodes each row as it is inserted; on DuckDB codes are behind, and say so, until `saedb encode`."""
    require_at_least_one(limit=limit, batch_size=batch_size)
    path = Path(path)
    check_source(path)
    corpus = corpus or corpus_name(path)
    report = LoadReport(source=path.name, ignored_columns=ignored_columns(path))
    source = str(path.resolve())  # load_errors tells files of the same name in different folders apart
    vectors: PrecomputedEmbeddings | None = None
    if embeddings is not None:
        name, vectors = precomputed_vectors(path, embedder, embeddings)
        backend.bind_embedder(name, vectors.dim)
        embed_batch = lambda papers: _unit(np.stack([vectors.lookup(p.arxiv_id) for p in papers]))  # noqa: E731
    else:
        runnable = get_embedder(embedder) if isinstance(embedder, str) else embedder
        backend.bind_embedder(runnable.name, runnable.dim)
        embed_batch = lambda papers: _embed(runnable, papers)  # noqa: E731
    present = backend.existing_arxiv_ids()
    seen: dict[str, int] = {}  # id -> line of its first row
    pending_errors: list[RowError] = []

    def reject(error: RowError) -> None:
        if error.ends_file:
            report.unread = error
        report.rejected += 1
        pending_errors.append(error)
        if len(report.first_errors) < 5:
            report.first_errors.append(error)

    def new_papers() -> Iterator[Paper]:
        for item in read_papers(path):
            if isinstance(item, RowError):
                reject(item)
                continue
            if limit is not None and report.read >= limit:
                return
            if item.arxiv_id in seen:
                report.duplicates += 1
                pending_errors.append(RowError(item.line, f"duplicate id {item.arxiv_id!r}: first on line {seen[item.arxiv_id]}", item.arxiv_id))
                continue
            seen[item.arxiv_id] = item.line
            if vectors is not None and item.arxiv_id not in present:
                try:
                    vectors.lookup(item.arxiv_id)
                except InvalidInputError as exc:
                    reject(RowError(item.line, str(exc), item.arxiv_id))
                    continue
            report.read += 1
            if item.arxiv_id in present:
                report.already_loaded += 1
                continue
            yield item

    bar = tqdm(total=limit, unit="doc", desc=f"loading {corpus}", disable=not progress)
    with backend.bulk_writes(), backend.encoding_deferred() if encode else nullcontext():
        for papers in chunked(new_papers(), batch_size):
            batch = DocumentBatch(
                arxiv_ids=[p.arxiv_id for p in papers],
                titles=[p.title for p in papers],
                abstracts=[p.abstract for p in papers],
                categories=[p.categories for p in papers],
                subjects=[p.subjects for p in papers],
                published=[p.published for p in papers],
                years=[p.year for p in papers],
                corpus=corpus,
                embeddings=embed_batch(papers),
            )
            with backend.transaction():
                added = backend.insert_documents(batch)
                report.added += added
                report.already_loaded += len(papers) - added  # another load, running beside this one, took them first
                backend.record_load_errors(source, [(e.line, e.reason, e.raw) for e in pending_errors])
            pending_errors.clear()
            bar.update(len(papers))
    bar.close()
    if pending_errors:
        with backend.transaction():
            backend.record_load_errors(source, [(e.line, e.reason, e.raw) for e in pending_errors])
    backend.create_embeddings_index()
    if encode:  # the published models' codes follow the table, as its indexes do (after an interrupted load too)
        report.models_encoded = sorted(m for m, r in encode_every_model(backend).items() if r.encoded + r.without_features + r.forgotten)
    if vectors is not None:
        report.unmatched_vectors = vectors.unmatched(seen.keys() | present)
    return report
