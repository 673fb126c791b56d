"""Features that mean something: the paper's step budget and figures in sae_models, the
clean filter, offline labels against a shuffled-label control, and the paper's family
algorithm with its statistics, on real DuckDB and Postgres."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from saedb.backends import Backend
from saedb.cli import app
from saedb.errors import InvalidInputError, TrainingDivergedError
from saedb.families import Family, build_families, deduplicate, find_families
from saedb.interp import OfflineLabeller, corpus_stats, label_control, mark_clean, run_autointerp
from saedb.interp.text import CorpusStats
from saedb.trainer import TrainConfig
from saedb.trainer.stream import ArraySource, ChunkedRows, training_batches
from saedb.trainer.train import train_from_db

runner = CliRunner()


# --- training budget ---------------------------------------------------------------------

def test_defaults_are_the_papers_and_train_and_grid_share_them() -> None:
    cfg = TrainConfig()
    assert (cfg.steps, cfg.lr, cfg.batch_size, cfg.dead_steps, cfg.aux_k_factor) == (13_300, 1e-4, 1024, 266, 2)
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    defaults = {name: {p.name: p.default for p in commands[name].params} for name in ("train", "grid")}
    for option in ("lr", "steps", "batch_size", "aux_coef", "dead_steps", "seed"):
        assert defaults["train"][option] == defaults["grid"][option] == getattr(cfg, option)


def test_a_yes_no_field_is_a_flag_pair_on_the_command_line() -> None:
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for name in ("train", "grid"):
        option = next(p for p in commands[name].params if p.name == "fit_encoder_scale")
        assert option.is_flag and option.opts == ["--fit-encoder-scale"] and option.secondary_opts == ["--no-fit-encoder-scale"]
        assert option.default is True


def test_budget_is_counted_in_optimiser_steps_with_a_new_shuffle_per_pass() -> None:
    x = np.arange(300, dtype=np.float32)[:, None].repeat(2, axis=1)  # row r holds the value r
    generator = torch.Generator().manual_seed(0)
    rows = ChunkedRows(ArraySource(x), chunk_rows=10_000, fraction=0.0, seed=0)
    drawn = [b[:, 0].long() for b in islice(training_batches(rows, 64, generator), 37)]
    assert len(drawn) == 37 and all(len(b) == 64 for b in drawn)
    assert len(set(torch.cat(drawn[:4]).tolist())) == 256  # 4 full batches per pass of 300 rows
    assert set(torch.cat(drawn[:9]).tolist()) == set(range(300))  # the 44 left over start the next pass
    assert drawn[0].tolist() != drawn[4].tolist()  # a new order each pass


@pytest.mark.parametrize("args, fields, message", [
    (["--batch-size", "0"], {"batch_size": 0}, "batch_size must be at least 1"),
    (["--lr", "nan"], {"lr": float("nan")}, "lr must be a positive finite number"),
    (["--k", "70", "--n", "64"], {"k": 70, "n_latents": 64}, "k must be in 1..n_latents"),
])
def test_bad_training_options_are_clear_errors(args: list[str], fields: dict, message: str, tmp_path) -> None:
    result = runner.invoke(app, ["train", "--db", str(tmp_path / "x.duckdb"), *args])
    assert result.exit_code == 2 and message in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    with pytest.raises(InvalidInputError, match=message):
        TrainConfig(**fields)


def test_a_diverged_run_is_never_published(loaded: Backend) -> None:
    with pytest.raises(TrainingDivergedError, match="nothing was published"):
        train_from_db(loaded, TrainConfig(k=8, n_latents=64, steps=30, batch_size=64, lr=1e30), "diverged")
    assert loaded.count("sae_models") == 0 and loaded.count("sae_codes") == 0


def test_models_record_steps_nmse_dead_fraction_and_encoder_decoder_cosine(loaded: Backend, db_url: str) -> None:
    model_id, result = train_from_db(loaded, TrainConfig(k=8, n_latents=64, steps=60, batch_size=64, lr=1e-3), "figures")
    row = loaded.query("SELECT steps, normalised_mse, dead_fraction, enc_dec_cosine FROM sae_models WHERE model_id = ?", (model_id,))[0]
    m = result.metrics
    assert row[0] == 60 and row[1] == pytest.approx(m["normalised_mse"]) and row[2] == pytest.approx(m["dead_fraction"])
    sae = loaded.load_sae(model_id)
    cosine = np.mean(np.sum(sae.w_enc * sae.w_dec, axis=1) / np.linalg.norm(sae.w_enc, axis=1) / np.linalg.norm(sae.w_dec, axis=1))
    assert row[3] == pytest.approx(cosine, abs=1e-5) and 0 < row[3] < 1  # untied from the initial 1.0
    assert 0 < m["holdout_normalised_mse"] and 8 <= m["holdout_samples"] <= 35 and m["samples"] + m["holdout_samples"] == 400
    shown = runner.invoke(app, ["models", "--db", db_url])
    header, line = shown.output.strip().splitlines()[:2]
    assert header.split("\t")[6:10] == ["steps", "normalised_mse", "dead_fraction", "enc_dec_cosine"]
    assert line.split("\t")[6] == "60" and float(line.split("\t")[7]) == pytest.approx(m["normalised_mse"], abs=1e-4)


# --- labels ------------------------------------------------------------------------------

def test_offline_labels_are_contrastive_phrases_and_the_predictor_reads_words() -> None:
    background = [f"A study of topic {i} with general methods and results." for i in range(200)]
    background += ["We train graph neural networks.", "Neural networks for images."]
    stats = CorpusStats.build(background)
    labeller = OfflineLabeller(stats)
    subjects = ["molecules", "traffic", "citations", "proteins", "meshes", "social ties", "circuits", "recipes",
                "power grids", "knowledge bases", "road maps", "code"]
    texts = [f"Graph Neural Networks for {s}. Graph neural networks model {s} as {i} nodes." for i, s in enumerate(subjects)]
    ranked = labeller.ranked_phrases(texts, [1.0] * len(texts))
    assert ranked[0].spelling == "graph neural networks"
    predictions = labeller.predict("graph neural networks", [
        "Deep graph neural network models of proteins.",  # verbatim (singular is the same phrase)
        "A graph of the networks of neural cells.",  # the words, not the phrase
        "Stellar winds in massive binaries.",
    ])
    assert predictions[0] > 0 > predictions[1] > predictions[2] == -1


def test_clean_filter_follows_the_paper(trained: tuple[Backend, int]) -> None:
    backend, model_id = trained
    rows = [  # feature, label, pearson, f1, density
        (1, "Stellar physics", 0.9, 0.9, 0.01),  # clean
        (2, "stellar physics in astrophysics", 0.95, 1.0, 0.01),  # same label once sanitised, and better: wins
        (3, "Dark matter halos", 0.79, 1.0, 0.01),  # pearson below 0.8
        (4, "Galaxy clusters", 0.9, 0.7, 0.01),  # f1 below 0.8
        (5, "Gravitational lensing", 0.9, 0.9, 0.25),  # too dense
        (6, "Presence of the letter 'x'", 1.0, 1.0, 0.01),  # vague label
        (7, "Neutrino masses", None, 1.0, 0.01),  # NaN Pearson
        (8, "Exoplanet atmospheres", 0.8, 0.8, 0.19),  # on the thresholds: clean
    ]
    for feature, label, r, f1, density in rows:
        backend.execute("INSERT INTO feature_labels (model_id, feature_id, labeller, label, pearson, f1, density) "
                        "VALUES (?, ?, 'handmade', ?, ?, ?, ?)", (model_id, feature, label, r, f1, density))
    assert mark_clean(backend, model_id, "handmade") == 2
    clean = [r[0] for r in backend.query(
        "SELECT feature_id FROM feature_labels WHERE model_id = ? AND labeller = 'handmade' AND clean ORDER BY feature_id", (model_id,))]
    assert clean == [2, 8]


def test_an_interrupted_labelling_run_leaves_usable_clean_flags(trained: tuple[Backend, int]) -> None:
    """The flags were computed only at the end: an interrupted run left clean NULL on every
    label, and families then found none. Now every stored label has its flag, as the filter says."""
    backend, model_id = trained
    offline = OfflineLabeller(corpus_stats(backend))

    class Interrupted:
        name = offline.name
        calls = 0

        def label(self, examples):
            Interrupted.calls += 1
            if Interrupted.calls > 40:
                raise KeyboardInterrupt  # Ctrl-C (or a kill) part-way
            return offline.label(examples)

        def predict(self, label, texts):
            return offline.predict(label, texts)

    with pytest.raises(KeyboardInterrupt):
        run_autointerp(backend, model_id, Interrupted(), concurrency=1)
    stored = backend.query("SELECT feature_id, clean FROM feature_labels WHERE model_id = ? AND labeller = ? ORDER BY feature_id",
                           (model_id, offline.name))
    assert len(stored) >= 30 and all(clean is not None for _, clean in stored)
    flags = dict(stored)
    mark_clean(backend, model_id, offline.name)  # recomputed from scratch: the same flags
    assert dict(backend.query("SELECT feature_id, clean FROM feature_labels WHERE model_id = ? AND labeller = ?",
                              (model_id, offline.name))) == flags


def test_own_labels_beat_shuffled_labels_on_held_out_abstracts(trained: tuple[Backend, int]) -> None:
    backend, model_id = trained
    labeller = OfflineLabeller(corpus_stats(backend))
    run_autointerp(backend, model_id, labeller, concurrency=1)
    report = label_control(backend, model_id, labeller.name, labeller)
    assert report.features >= 60
    # Pearson margin over training seeds 0-4: 0.24-0.34 (in-memory trainer), 0.24-0.30 (streaming trainer);
    # F1 margin 0.22-0.28. The shuffled label's margin is 0 by construction.
    assert report.pearson_margin() >= 0.2 and report.f1_margin() >= 0.15, "\n".join(report.lines())
    assert report.shuffled.nan_share() > report.own.nan_share()
    labels = [r[0] for r in backend.query("SELECT label FROM feature_labels WHERE model_id = ?", (model_id,))]
    assert all(1 <= len(label.split()) <= 8 for label in labels)


# --- families ----------------------------------------------------------------------------

def symmetric(size: int, diagonal: dict[int, int], pairs: dict[tuple[int, int], int]) -> np.ndarray:
    counts = np.zeros((size, size))
    for i, n in diagonal.items():
        counts[i, i] = n
    for (i, j), n in pairs.items():
        counts[i, j] = counts[j, i] = n
    return counts


def test_the_papers_family_algorithm_on_known_co_occurrence() -> None:
    # 0 (dense) -> 1, 2, 3, 4 strongly; 1 -> 5, 6, 7, 8; 9 -> 10, 11 only (out-degree 2: no root);
    # 2 -> 12..15 at a normalised 0.089: an edge only from the second round on (threshold 0.07).
    diagonal = {0: 1000, 1: 200, 2: 150, 3: 150, 4: 150, 5: 100, 6: 100, 7: 100, 8: 100, 9: 500, 10: 90, 11: 90,
                12: 100, 13: 100, 14: 100, 15: 100}
    pairs = {(0, c): 300 for c in (1, 2, 3, 4)} | {(1, c): 80 for c in (5, 6, 7, 8)} | {(9, 10): 60, (9, 11): 60}
    pairs |= {(2, c): 9 for c in (12, 13, 14, 15)}
    families = find_families(symmetric(16, diagonal, pairs), list(range(16)))
    summary = [(f.root, f.iteration, sorted(f.children)) for f in families]
    assert summary == [(0, 0, [1, 2, 3, 4, 5, 6, 7, 8]), (1, 1, [5, 6, 7, 8]), (2, 1, [12, 13, 14, 15])]
    first = families[0]
    assert first.members[0] == (None, 0) and first.members[1] == (0, 1) and first.members[6] == (1, 2)
    for family in families:  # every parent edge stays inside its family
        assert all(parent in family.members for parent, _ in family.members.values() if parent is not None)


def test_a_feature_with_two_denser_tree_neighbours_keeps_its_parent_inside_each_family() -> None:
    # 0 and 1 are dense roots; 2 is sparser than both and joins them in the tree: two parents.
    diagonal = {0: 500, 1: 400, 2: 100, **{c: 50 for c in range(3, 12)}}
    pairs = {(0, 2): 60, (1, 2): 60} | {(0, c): 30 for c in (3, 4, 5)} | {(1, c): 30 for c in (6, 7, 8)} | {(2, c): 30 for c in (9, 10, 11)}
    families = find_families(symmetric(12, diagonal, pairs), list(range(12)))
    assert {f.root for f in families if f.iteration == 0} == {0, 1}
    for family in families:
        assert all(parent in family.members for parent, _ in family.members.values() if parent is not None)
    both = [f for f in families if 2 in f.members and f.root in (0, 1)]
    assert sorted(f.members[2][0] for f in both) == [0, 1]


def test_a_dense_hub_does_not_swallow_the_topics_that_co_occur_with_it() -> None:
    # Feature 0 fires on 10,000 documents and on 60% of every other feature's documents;
    # three topics each have a leader (200 documents) and 4 members (100) that fire together.
    diagonal, pairs = {0: 10_000}, {}
    for topic in range(3):
        leader, members = 1 + 5 * topic, [2 + 5 * topic + i for i in range(4)]
        diagonal |= {leader: 200} | {m: 100 for m in members}
        pairs |= {(0, leader): 120} | {(0, m): 60 for m in members} | {(leader, m): 50 for m in members}
        pairs |= {(a, b): 30 for a in members for b in members if a < b}
    families = find_families(symmetric(16, diagonal, pairs), list(range(16)))
    assert sorted((f.root, sorted(f.children)) for f in families) == [
        (1, [2, 3, 4, 5]), (6, [7, 8, 9, 10]), (11, [12, 13, 14, 15])]


def test_families_need_more_than_three_descendants_and_drop_near_duplicates() -> None:
    big = Family(0, 0, {0: (None, 0), **{c: (0, 1) for c in (1, 2, 3, 4, 5)}})
    near = Family(9, 1, {9: (None, 0), **{c: (9, 1) for c in (1, 2, 3, 4)}})  # Jaccard 4/5 = 0.8 with big
    apart = Family(7, 1, {7: (None, 0), **{c: (7, 1) for c in (1, 2, 20, 21)}})  # Jaccard 2/7
    assert [f.root for f in deduplicate([near, big, apart])] == [0, 7]
    # A root with three children only (not more than 3 descendants) is no family.
    three = symmetric(4, {0: 100, 1: 50, 2: 50, 3: 50}, {(0, 1): 40, (0, 2): 40, (0, 3): 40})
    assert find_families(three, [0, 1, 2, 3]) == []


def test_families_over_clean_features_with_names_scores_and_statistics(trained: tuple[Backend, int]) -> None:
    backend, model_id = trained
    labeller = OfflineLabeller(corpus_stats(backend))
    run_autointerp(backend, model_id, labeller, concurrency=1)
    backend.execute("UPDATE feature_labels SET clean = TRUE WHERE model_id = ?", (model_id,))  # a tiny model: use all labels
    families = build_families(backend, model_id, predictor=labeller)
    assert families
    outside = backend.query(
        "SELECT count(*) FROM family_members m WHERE m.model_id = ? AND m.parent_id IS NOT NULL AND NOT EXISTS "
        "(SELECT 1 FROM family_members p WHERE p.model_id = m.model_id AND p.family_id = m.family_id AND p.feature_id = m.parent_id)",
        (model_id,))[0][0]
    assert outside == 0
    stored = backend.query("SELECT size, label, f1, pearson FROM feature_families WHERE model_id = ? ORDER BY family_id", (model_id,))
    assert [r[0] for r in stored] == [len(f.family.members) for f in families]
    assert all(r[1] and 0 <= r[2] <= 1 for r in stored)
    stats = backend.query("SELECT n_families, mean_children, max_children, share_of_features, block_diagonality, "
                          "mean_cooccurrence_ratio, membership_fraction FROM family_stats WHERE model_id = ?", (model_id,))[0]
    children = [len(f.family.children) for f in families]
    assert stats[0] == len(families) and stats[1] == pytest.approx(np.mean(children)) and stats[2] == max(children)
    members = {m for f in families for m in f.family.members}
    assert stats[3] == pytest.approx(len(members) / 128)
    assert stats[4] > 1  # families co-occur more than random sets of the same sizes
    assert stats[5] is not None and 0 <= stats[6] <= 1
