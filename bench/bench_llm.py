"""The paper's LLM labeller against real local models (the base Gemma 3 270M and the instruct
SmolLM2-135M-Instruct, each under both protocols), beside the offline labeller, on the same
seeded sample of features; each with its shuffled-label control.

hh_ml's MiniLM vectors (the DuckDB file of bench_parallel.py), an SAE k=32 n=3072 trained here
if missing; ``--features`` features drawn with seed 0 among those with enough examples; the
local model served by ``saedb llm``'s code (llama.cpp's server, 1 thread, 1 slot). Prints per
labeller: features labelled, Pearson mean (NaN left out) and NaN share, F1, the control's
margin, seconds per feature, malformed replies; then 10 labels of each, verbatim.

    python bench/bench_llm.py [--features 12] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import random
import time

from common import ml_minilm

from saedb.backends import Backend, connect
from saedb.interp import LLMLabeller, OfflineLabeller, corpus_stats, label_control, run_autointerp
from saedb.llm import ChatModel, ProtocolError, ResponseCache
from saedb.localllm import local_llm
from saedb.trainer import TrainConfig
from saedb.trainer.train import train_from_url


def model_id(url: str, steps: int) -> int:
    with connect(url, read_only=True) as backend:
        rows = backend.query("SELECT model_id FROM sae_models WHERE name = 'bench-llm' AND status = 'ready'")
    if rows:
        return rows[0][0]
    published, _ = train_from_url(url, TrainConfig(k=32, n_latents=3072, steps=steps), "bench-llm")
    return published


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--features", type=int, default=12)
    parser.add_argument("--steps", type=int, default=2000, help="training steps of the SAE labelled (once per cache)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--models", nargs="+", default=["gemma3-270m", "smollm2-135m"])
    parser.add_argument("--protocols", nargs="+", default=["completion", "chat"], choices=["completion", "chat"])
    args = parser.parse_args()
    url = ml_minilm()
    model = model_id(url, args.steps)
    with connect(url) as backend:
        candidates = [r[0] for r in backend.query(
            "SELECT feature_id FROM sae_codes WHERE model_id = ? GROUP BY feature_id HAVING count(*) >= 20 ORDER BY feature_id", (model,))]
        sample = sorted(random.Random(0).sample(candidates, args.features))
        offline = OfflineLabeller(corpus_stats(backend))
        report(backend, model, sample, offline, offline)
        for name in args.models:
            with local_llm(name) as server:
                for protocol in args.protocols:
                    chat = ChatModel(server.model, base_url=server.base_url, max_tokens=args.max_tokens, protocol=protocol,
                                     cache=ResponseCache(backend, server.model))
                    report(backend, model, sample, LLMLabeller(chat), offline)


def report(backend: Backend, model: int, sample: list[int], labeller: OfflineLabeller | LLMLabeller,
           offline: OfflineLabeller) -> None:
    """Label the sample afresh with one labeller and print its figures, control and labels."""
    backend.execute("DELETE FROM feature_labels WHERE model_id = ? AND labeller = ?", (model, labeller.name))
    started = time.perf_counter()
    note = ""
    try:
        run_autointerp(backend, model, labeller, features=sample, concurrency=1)
    except ProtocolError as stopped:
        note = f"  stopped: {stopped}".split(" (")[0]
    seconds = time.perf_counter() - started
    rows = backend.query("SELECT feature_id, label, pearson, f1 FROM feature_labels WHERE model_id = ? AND labeller = ? "
                         "ORDER BY feature_id", (model, labeller.name))
    defined = [r[2] for r in rows if r[2] is not None]
    print(f"\n{labeller.name}: {len(rows)} of {len(sample)} features labelled in {seconds:.0f} s "
          f"({seconds / len(sample):.1f} s per feature){note}")
    if hasattr(labeller, "chat"):
        print("  " + labeller.chat.counts.summary())
    if len(rows) >= 2:
        print(f"  Pearson mean {sum(defined) / max(len(defined), 1):.3f} (defined), NaN {1 - len(defined) / len(rows):.0%}, "
              f"F1 {sum(r[3] for r in rows) / len(rows):.3f}")
        for line in label_control(backend, model, labeller.name, labeller).lines()[1:]:
            print("  " + line)
        if labeller is not offline:  # the same labels scored by the lexical predictor: an independent judge
            print("  scored by the offline (lexical) predictor instead:")
            for line in label_control(backend, model, labeller.name, offline, record=False).lines()[1:]:
                print("  " + line)
    for feature_id, label, r, f1 in rows[:10]:
        print(f"  feature {feature_id:>5}  r={'nan' if r is None else f'{r:+.2f}'}  F1={f1:.2f}  {label}")
    if hasattr(labeller, "chat"):
        labeller.flush_responses()


if __name__ == "__main__":
    main()
