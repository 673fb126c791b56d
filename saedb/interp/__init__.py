"""Automated interpretability: label features and score the labels (interpreter + predictor)."""

from saedb.interp.autointerp import corpus_stats, mark_clean, run_autointerp
from saedb.interp.control import label_control
from saedb.interp.labellers import LexicalPredictor, LLMLabeller, OfflineLabeller

__all__ = ["run_autointerp", "mark_clean", "corpus_stats", "label_control", "LLMLabeller", "OfflineLabeller", "LexicalPredictor"]
