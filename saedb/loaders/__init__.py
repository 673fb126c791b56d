"""Corpus loaders: read JSONL / CSV / Parquet papers, embed them, bulk-load them."""

from saedb.loaders.corpus import Paper, RowError, read_papers
from saedb.loaders.pipeline import LoadReport, load_corpus

__all__ = ["Paper", "RowError", "read_papers", "LoadReport", "load_corpus"]
