"""Load a corpus file into a saedb database: validate, embed, bulk-insert in batches.

Idempotent: papers already in the database (by arXiv id) are skipped before embedding,
so a re-run adds nothing. Resumable: each batch commits on its own, so after a kill the
next run carries on from the last committed batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from saedb.backends import Backend, DocumentBatch
from saedb.embedders import Embedder
from saedb.errors import InvalidInputError
from saedb.loaders.corpus import Paper, RowError, check_source, read_papers


@dataclass
class LoadReport:
    source: str
    read: int = 0
    added: int = 0
    already_loaded: int = 0
    duplicates: int = 0
    rejected: int = 0
    first_errors: list[RowError] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"{self.source}: read {self.read} valid rows, added {self.added}, "
            f"{self.already_loaded} already loaded, {self.duplicates} duplicate ids in file, {self.rejected} rejected"
        )
        for err in self.first_errors:
            text += f"\n  line {err.line}: {err.reason}"
        if self.rejected > len(self.first_errors):
            text += f"\n  ... all {self.rejected} rejected rows are in the load_errors table"
        return text


def corpus_name(path: Path) -> str:
    """'hh_astro.jsonl.gz' -> 'hh_astro'."""
    return re.sub(r"\.(jsonl|json|ndjson|csv|parquet)(\.gz)?$", "", path.name, flags=re.IGNORECASE)


def _batches(items: Iterable[Paper], size: int) -> Iterator[list[Paper]]:
    batch: list[Paper] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _embed(embedder: Embedder, papers: list[Paper]) -> np.ndarray:
    vectors = np.asarray(embedder.embed([p.text for p in papers]), dtype=np.float32)
    if vectors.shape != (len(papers), embedder.dim) or not np.isfinite(vectors).all():
        raise InvalidInputError(
            f"embedder {embedder.name} returned {vectors.shape} values (expected {(len(papers), embedder.dim)}, all finite)"
        )
    return vectors


def load_corpus(
    backend: Backend,
    path: str | Path,
    embedder: Embedder,
    *,
    limit: int | None = None,
    batch_size: int = 1024,
    corpus: str | None = None,
    progress: bool = True,
) -> LoadReport:
    """Load the first ``limit`` valid papers of ``path`` (all if None) with their embeddings."""
    path = Path(path)
    check_source(path)
    corpus = corpus or corpus_name(path)
    report = LoadReport(source=path.name)
    backend.bind_embedder(embedder.name, embedder.dim)
    present = backend.existing_arxiv_ids()
    seen: set[str] = set()
    pending_errors: list[RowError] = []

    def new_papers() -> Iterator[Paper]:
        for item in read_papers(path):
            if isinstance(item, RowError):
                report.rejected += 1
                pending_errors.append(item)
                if len(report.first_errors) < 5:
                    report.first_errors.append(item)
                continue
            if limit is not None and report.read >= limit:
                return
            if item.arxiv_id in seen:
                report.duplicates += 1
                continue
            seen.add(item.arxiv_id)
            report.read += 1
            if item.arxiv_id in present:
                report.already_loaded += 1
                continue
            yield item

    bar = tqdm(total=limit, unit="doc", desc=f"loading {corpus}", disable=not progress)
    for papers in _batches(new_papers(), batch_size):
        batch = DocumentBatch(
            arxiv_ids=[p.arxiv_id for p in papers],
            titles=[p.title for p in papers],
            abstracts=[p.abstract for p in papers],
            categories=[p.categories for p in papers],
            subjects=[p.subjects for p in papers],
            published=[p.published for p in papers],
            years=[p.year for p in papers],
            corpus=corpus,
            embeddings=_embed(embedder, papers),
        )
        with backend.transaction():
            report.added += backend.insert_documents(batch)
            backend.record_load_errors(path.name, [(e.line, e.reason, e.raw) for e in pending_errors])
        pending_errors.clear()
        bar.update(len(papers))
    bar.close()
    if pending_errors:
        with backend.transaction():
            backend.record_load_errors(path.name, [(e.line, e.reason, e.raw) for e in pending_errors])
    backend.create_embeddings_index()
    return report
