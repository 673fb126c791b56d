"""Automated interpretability: label features and score the labels (interpreter + predictor)."""

from saedb.interp.autointerp import run_autointerp
from saedb.interp.labellers import LLMLabeller, OfflineLabeller

__all__ = ["run_autointerp", "LLMLabeller", "OfflineLabeller"]
