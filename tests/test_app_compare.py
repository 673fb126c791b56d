"""The web app's compare page and the feature page's "in other models", in headless Chromium on
both backends, and the compare API's answers to bad filters: two models over the astro slice,
matched by saedb match."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import pytest

from saedb.analytics import enrichment
from saedb.app.server import App, make_server
from saedb.backends import connect
from saedb.lineage import match_models
from saedb.loaders import load_corpus
from saedb.trainer import TrainConfig
from saedb.trainer.train import train_from_db
from tests.test_app import SCREENSHOTS, browser, get, wait_for  # noqa: F401 - browser is a fixture


@pytest.fixture
def two_models_served(db_url: str, astro_slice: Path, embedder) -> Iterator[dict]:
    with connect(db_url) as backend:
        load_corpus(backend, astro_slice, embedder, progress=False)
        small, _ = train_from_db(backend, TrainConfig(k=8, n_latents=128, steps=180, batch_size=64, lr=1e-3), "small")
        wide, _ = train_from_db(backend, TrainConfig(k=8, n_latents=256, steps=180, batch_size=64, lr=1e-3, seed=1), "wide")
        match_models(backend, small, wide)
        expected = enrichment(backend, small, "year <= 2006").to_pylist()
        feature, best, cosine = backend.query("SELECT feature_id, other_feature_id, cosine FROM feature_matches "
                                              "WHERE model_id = ? ORDER BY cosine DESC, feature_id LIMIT 1", (small,))[0]
    app = App(db_url, pool_size=4, timeout_s=10)
    server = make_server(app, "127.0.0.1", 0, idle_timeout_s=2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"base": f"http://127.0.0.1:{server.server_port}", "small": small, "wide": wide, "expected": expected,
           "feature": feature, "best": best, "cosine": cosine}
    server.shutdown()
    server.server_close()
    app.pool.close()


def test_compare_page_its_errors_and_the_feature_in_other_models(two_models_served: dict, browser, db_url: str) -> None:
    """Two filters give the over- and under-represented features with the figures of
    feature_enrichment; the feature page lists the feature's best match in a matched model and
    its link opens that feature of that model; bad filters get clear answers from the API."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    s = two_models_served
    base, small, wide, expected = s["base"], s["small"], s["wide"], s["expected"]
    feature, best, cosine = s["feature"], s["best"], s["cosine"]
    kind = "postgres" if db_url.startswith("postgres") else "duckdb"
    browser.get(base + "/#/dashboard")
    wait_for(browser, "#model option", lambda els: len(els) == 2)
    Select(browser.find_element(By.ID, "model")).select_by_value(str(small))
    wait_for(browser, "h1", lambda els: els and els[0].text.startswith("Model small"))
    browser.find_element(By.CSS_SELECTOR, "nav a[data-page=compare]").click()
    wait_for(browser, "#set-a [name=to]")[0].send_keys("2006")
    browser.find_element(By.ID, "run-compare").click()
    summary = wait_for(browser, "p.summary")[0].text
    assert f"({expected[0]['a_total']} documents) against B: the other documents ({expected[0]['b_total']})" in summary
    assert f"{sum(r['q_value'] < 0.05 for r in expected)} of {len(expected)} features differ" in summary
    over = sorted([r for r in expected if r["log_odds"] > 0][:15], key=lambda r: -r["log_odds"])  # the most significant, as charted
    rows = wait_for(browser, "table.over tr", lambda els: len(els) == len(over) + 1)[1:]
    assert [row.text.split()[0] for row in rows] == [f"#{r['feature_id']}" for r in over]
    assert f"{over[0]['log_odds']:.2f} [{over[0]['log_odds_low']:.2f}, {over[0]['log_odds_high']:.2f}]" in rows[0].text
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.odds circle.dot")) == len(over) + len([r for r in expected if r["log_odds"] < 0][:15])
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / f"compare-{kind}.png"))
    # Sets that overlap (as astro-ph.EP and astro-ph.CO do through cross-listed papers): the
    # documents in both are left out of both by default, and said.
    with connect(db_url, read_only=True) as backend:
        count = lambda where: backend.query(f"SELECT count(*) FROM papers WHERE {where}")[0][0]  # noqa: E731
        in_both, a_only, b_only = count("year BETWEEN 2000 AND 2006"), count("year <= 1999"), count("year >= 2007")
    assert in_both > 0
    wait_for(browser, "#set-b [name=from]")[0].send_keys("2000")
    browser.find_element(By.ID, "run-compare").click()
    summary = wait_for(browser, "p.summary", lambda els: els and "against B: 2000–…" in els[0].text)[0].text
    assert f"({a_only} documents) against B: 2000–… ({b_only})" in summary and f"{in_both} documents are in both sets: left out of both" in summary
    browser.find_element(By.CSS_SELECTOR, "#set-a [name=to]").clear()
    browser.find_element(By.ID, "run-compare").click()
    assert "set A needs a category or a year" in wait_for(browser, "#error", lambda els: els and els[0].text)[0].text
    overlapping = [("model", str(small)), ("a_to", "2006"), ("b_from", "2000")]
    for rule, totals in (("leave-out", (a_only, b_only)), ("a", (a_only + in_both, b_only)), ("b", (a_only, b_only + in_both))):
        status, body = get(base, "compare", [*overlapping, ("overlap", rule)])
        assert status == 200 and (body["a_total"], body["b_total"], body["in_both"]) == (*totals, in_both), (rule, body)
        assert [r["log_odds"] for r in body["over"]] == sorted((r["log_odds"] for r in body["over"]), reverse=True)
        assert [r["log_odds"] for r in body["under"]] == sorted(r["log_odds"] for r in body["under"])

    browser.get(f"{base}/#/feature/{feature}")
    link = wait_for(browser, ".other-models a.other-model")[0]
    assert link.text == f"#{best}" and f"{cosine:.2f}" in browser.find_element(By.CSS_SELECTOR, ".other-models").text
    link.click()
    wait_for(browser, ".other-models", lambda els: len(els) == 1 and f"small v1 (#{small})" in els[0].text)  # the wide model's page
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith(f"Feature #{best}")
    assert Select(browser.find_element(By.ID, "model")).first_selected_option.get_attribute("value") == str(wide)

    # the API's answers to bad filters
    small = str(small)
    for params, status, message in [
        ([("model", small)], 400, "set A needs a category or a year"),
        ([("model", "77"), ("a_to", "2006")], 404, "unknown model 77"),
        ([("model", small), ("a_from", "199x")], 400, "a_from must be an integer"),
        ([("model", small), ("a_from", "1990"), ("a_to", "1991")], 400, f"holds no document encoded by model {small}"),
        ([("model", small), ("a_to", "2006"), ("b_to", "2006")], 400, "sets A and B are the same filter"),
        ([("model", small), ("a_to", "2006"), ("b_from", "2000"), ("overlap", "both")], 400, "overlap must be one of"),
        ([("model", small), ("a_category", "x' OR 1=1 --")], 400, "holds no document"),  # a literal, not SQL
        ([("model", small), ("b_to", "2006"), ("a_category", "astro\x00ph")], 400, "a_category holds a NUL character"),
    ]:
        got_status, body = get(base, "compare", params)
        assert (got_status, message in body["error"]) == (status, True), (params, body)
