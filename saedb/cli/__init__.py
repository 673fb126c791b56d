"""The ``saedb`` command line, one module per area; each registers its commands on ``app``.

- data: load, attach, encode, index
- models: train, grid, export, import, models, match
- interpretation: interp, families
- analytics: search, diff, predictors, slopes, sql
- evaluation: eval, eval-plot
- servers: serve, reader, postgres, cluster, llm, demo

Shared options (``--db``, the LLM options) and the error exit live in ``common``; the trainer's
options are generated from its config dataclass by ``config_options``.
"""

from saedb.cli.common import app

# Imported for their commands, in the order `saedb --help` lists them: a user's workflow.
import saedb.cli.data  # noqa: E402, F401  isort: skip
import saedb.cli.models  # noqa: E402, F401  isort: skip
import saedb.cli.interpretation  # noqa: E402, F401  isort: skip
import saedb.cli.analytics  # noqa: E402, F401  isort: skip
import saedb.cli.evaluation  # noqa: E402, F401  isort: skip
import saedb.cli.servers  # noqa: E402, F401  isort: skip

__all__ = ["app"]
