"""Training rows streamed in chunks, so the trainer's memory is bounded by the chunk size,
not by the corpus.

Rules:
- The corpus is cut into blocks of ``BLOCK_ROWS`` consecutive doc ids (a range scan each).
  Every pass visits the blocks in a new random order; a chunk is ``chunk_rows // block_rows``
  of them read together and shuffled, so one chunk mixes documents from all over the corpus
  (the shard + shuffle-buffer scheme of streaming data loaders). Rows left over after the
  last full batch of a chunk start the next one; nothing is dropped. Memory: one chunk,
  one block and one batch (plus, on DuckDB, its page cache of the chunk being read).
- A corpus that fits in one chunk is read once and kept: then every pass is a fresh
  permutation of all rows, exactly an in-memory trainer.
- A document is held out when a hash of (doc id, seed) says so: the same documents at any
  chunk size and in any read order, never in a training batch.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

import numpy as np
import torch

from saedb.errors import InvalidInputError
from saedb.holdout import held_out
from saedb.trainer.parallel import Share

if TYPE_CHECKING:
    from saedb.backends import Backend

BLOCK_ROWS = 4096


class EmbeddingSource(Protocol):
    """Embeddings addressable by block of ``block_rows`` consecutive doc ids."""

    block_rows: int

    def blocks(self) -> np.ndarray:
        """The block numbers that may hold rows (doc_id // block_rows)."""
        ...

    def read_blocks(self, blocks: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(doc_ids, float32 matrix) of each block in turn."""
        ...


@dataclass
class ArraySource:
    """An in-memory matrix; row r has doc id r."""

    matrix: np.ndarray
    block_rows: int = BLOCK_ROWS

    def blocks(self) -> np.ndarray:
        return np.arange(-(-self.matrix.shape[0] // self.block_rows))

    def read_blocks(self, blocks: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for block in blocks:
            start = int(block) * self.block_rows
            stop = min(start + self.block_rows, self.matrix.shape[0])
            yield np.arange(start, stop), self.matrix[start:stop]


class DatabaseSource:
    """The database's embeddings table, read one block range at a time through ``open_reader``
    (a connection per chunk for a URL, so a DuckDB file is not held open during training)."""

    def __init__(self, open_reader: Callable[[], AbstractContextManager["Backend"]], block_rows: int = BLOCK_ROWS) -> None:
        self.open_reader, self.block_rows = open_reader, block_rows
        with open_reader() as backend:
            backend.require_embedder()
            low, high, self.count = backend.embedding_span()
        self._blocks = np.arange(low // block_rows, high // block_rows + 1) if self.count else np.zeros(0, np.int64)

    def blocks(self) -> np.ndarray:
        return self._blocks

    def read_blocks(self, blocks: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Several blocks through one connection."""
        with self.open_reader() as backend:
            for block in blocks:
                yield backend.embedding_range(int(block) * self.block_rows, (int(block) + 1) * self.block_rows)


@dataclass
class Chunk:
    training: np.ndarray  # float32 rows
    held: np.ndarray  # float32 rows held out


def read_chunk(source: EmbeddingSource, blocks: np.ndarray, fraction: float, seed: int,
               keep: Callable[[np.ndarray], np.ndarray] | None = None) -> Chunk:
    """The rows of ``blocks`` (those whose doc ids ``keep`` accepts, when given) split into
    training and held-out rows, copied block by block into
    arrays sized for the most rows the blocks can hold (pages never written are never
    resident), so assembling a chunk holds one chunk plus one block; InvalidInputError if any
    value is NaN or infinite (a model trained on them would be silently wrong)."""
    training = held = None
    n_training = n_held = 0
    for doc_ids, matrix in source.read_blocks(blocks):
        if not len(doc_ids):
            continue
        if keep is not None:
            kept = keep(doc_ids)
            doc_ids, matrix = doc_ids[kept], matrix[kept]
        if not np.isfinite(matrix).all():
            raise InvalidInputError("training embeddings contain NaN or infinite values")
        if training is None:
            training = np.empty((len(blocks) * source.block_rows, matrix.shape[1]), np.float32)
            held = np.empty_like(training)
        mask = held_out(doc_ids, fraction, seed)
        n_new, n_new_held = int((~mask).sum()), int(mask.sum())
        training[n_training : n_training + n_new] = matrix[~mask]
        held[n_held : n_held + n_new_held] = matrix[mask]  # type: ignore[index]
        n_training, n_held = n_training + n_new, n_held + n_new_held
    if training is None or held is None:
        return Chunk(np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32))
    return Chunk(training[:n_training], held[:n_held])


class ChunkedRows:
    """The chunk schedule of one source: random block order per pass, ``per_chunk`` blocks per
    chunk, of which one rank reads its ``share`` (all of it on one process)."""

    def __init__(self, source: EmbeddingSource, chunk_rows: int, fraction: float, seed: int, share: Share = Share()) -> None:
        self.source, self.fraction, self.seed, self.share = source, fraction, seed, share
        # The block order has a generator of its own: every rank draws the same order.
        self.generator = torch.Generator().manual_seed(seed)
        self.block_ids = source.blocks()
        self.per_chunk = max(1, chunk_rows // source.block_rows)
        self.single = len(self.block_ids) <= self.per_chunk
        self._kept: Chunk | None = None

    def chunks(self, shuffled: bool = True) -> Iterator[Chunk]:
        """One pass: chunks in a random block order (or doc id order when not shuffled)."""
        if self.single:
            if self._kept is None:
                self._kept = self._read(self.block_ids)
            yield self._kept
            return
        order = self.block_ids[torch.randperm(len(self.block_ids), generator=self.generator).numpy()] if shuffled else self.block_ids
        for start in range(0, len(order), self.per_chunk):
            yield self._read(order[start : start + self.per_chunk])

    def _read(self, blocks: np.ndarray) -> Chunk:
        mine, by_rows = self.share.blocks(blocks)
        return read_chunk(self.source, mine, self.fraction, self.seed, self.share.rows if by_rows else None)


def training_batches(rows: ChunkedRows, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches of ``batch_size`` training rows, each chunk in a new random order,
    gathered batch by batch (no shuffled copy of the chunk); the rows of a chunk that do not
    fill a batch open the next one. A corpus with fewer training rows than one batch gives
    all of them as each batch."""
    pending: list[torch.Tensor] = []
    carried = 0
    while True:
        yielded = False
        for chunk in rows.chunks():
            x = torch.from_numpy(chunk.training)
            order = torch.randperm(x.shape[0], generator=generator)
            start = 0
            while start < x.shape[0]:
                take = min(batch_size - carried, x.shape[0] - start)
                pending.append(x[order[start : start + take]])
                carried, start = carried + take, start + take
                if carried == batch_size:
                    yield pending[0] if len(pending) == 1 else torch.cat(pending)
                    pending, carried, yielded = [], 0, True
            del chunk, x, order  # let this chunk go before the next one is read
        if not yielded:
            if not carried:
                return
            yield torch.cat(pending)
            pending, carried = [], 0
