"""Data-parallel training on torch.distributed (gloo, 2 CPU processes) against one process on
the same real slice, and a rank that fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from saedb.backends import connect
from saedb.cli import app
from saedb.errors import TrainingFailedError
from saedb.loaders import load_corpus
from saedb.trainer import TrainConfig
from saedb.trainer.parallel import Share
from saedb.holdout import held_out
from saedb.trainer.stream import ArraySource, ChunkedRows
from saedb.trainer.train import train_from_url, train_in_processes
from tests.conftest import ML, write_slice

CONFIG = TrainConfig(k=8, n_latents=256, steps=300, batch_size=128, lr=1e-3)


@pytest.fixture(scope="module")
def ml_db(tmp_path_factory: pytest.TempPathFactory, embedder) -> str:
    """2,000 real cs.LG abstracts in a DuckDB file."""
    directory = tmp_path_factory.mktemp("parallel")
    path = str(directory / "ml.duckdb")
    with connect(path) as backend:
        load_corpus(backend, write_slice(ML, directory / "ml_2000.jsonl.gz", 2000), embedder, progress=False)
    return path


def test_the_ranks_share_every_chunk_without_overlap() -> None:
    x = np.random.default_rng(0).standard_normal((1000, 4)).astype(np.float32)
    for chunk_rows in (300, 5000):  # several blocks a chunk (every 2nd block each), one block (rows by doc id)
        passes = []
        for rank in (0, 1):
            rows = ChunkedRows(ArraySource(x, block_rows=50 if chunk_rows == 300 else 1000), chunk_rows, 0.1, 0, Share(rank, 2))
            passes.append([np.concatenate([c.training for c in rows.chunks()]) for _ in range(2)])
        for p in range(2):
            mine, theirs = ({tuple(r) for r in passes[rank][p]} for rank in (0, 1))
            assert not mine & theirs
            assert len(mine | theirs) == int((~held_out(np.arange(1000), 0.1, 0)).sum())


def test_two_processes_reach_the_held_out_nmse_of_one(ml_db: str) -> None:
    _, single = train_from_url(ml_db, CONFIG, "one")
    result = CliRunner().invoke(app, ["train", "--db", ml_db, "--name", "two", "--nproc", "2", "--k", "8", "--n", "256",
                                      "--steps", "300", "--batch-size", "128", "--lr", "1e-3"])
    assert result.exit_code == 0, result.output
    assert "published model 2" in result.output
    with connect(ml_db, read_only=True) as backend:
        parallel = backend.model_row(2)["metrics"]
        assert backend.count("sae_codes") > 0
        assert backend.query("SELECT count(DISTINCT doc_id) FROM sae_codes WHERE model_id = 2") == \
            backend.query("SELECT count(DISTINCT doc_id) FROM sae_codes WHERE model_id = 1")
    assert parallel["samples"] == single.metrics["samples"] and parallel["holdout_samples"] == single.metrics["holdout_samples"]
    assert parallel["holdout_normalised_mse"] == pytest.approx(single.metrics["holdout_normalised_mse"], rel=0.05)


def test_a_failed_rank_fails_the_run_and_nothing_is_published(ml_db: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.duckdb"
    broken.write_bytes(Path(ml_db).read_bytes())
    with connect(str(broken)) as backend:
        before = backend.count("sae_models")
        ids = np.array([r[0] for r in backend.query("SELECT doc_id FROM embeddings ORDER BY doc_id")])
        victim = int(ids[(ids % 2 == 1) & ~held_out(ids, CONFIG.holdout_fraction, CONFIG.seed)][0])  # rank 1 trains on it
        poisoned = "CAST(list_transform(embedding, lambda v: 'nan'::FLOAT) AS FLOAT[256])"
        backend.execute(f"UPDATE embeddings SET embedding = {poisoned}, embedding_hash = hash({poisoned}) WHERE doc_id = ?", (victim,))
    with pytest.raises(TrainingFailedError, match=r"rank 1 of 2 failed, nothing was published: .*NaN"):
        train_in_processes(str(broken), CONFIG, "broken", 2)
    with connect(str(broken), read_only=True) as backend:
        assert backend.count("sae_models") == before
