"""Steered search evaluated with the paper's protocol against query rewriting (paper-notes §5)."""

from saedb.evaluation.cases import Query, file_queries, title_queries
from saedb.evaluation.judges import get_judge
from saedb.evaluation.rewriters import get_rewriter
from saedb.evaluation.runner import EvalRun, run_evaluation, store_run

__all__ = ["EvalRun", "Query", "file_queries", "get_judge", "get_rewriter", "run_evaluation", "store_run", "title_queries"]
