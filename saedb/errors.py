"""Exceptions raised by saedb. Every user-facing failure is a SaedbError with a clear message."""


class SaedbError(Exception):
    """Base class for all saedb errors."""


class InvalidInputError(SaedbError, ValueError):
    """Bad input: wrong dimension, NaN, NULL, empty text, unknown feature, malformed row."""


class UnknownModelError(SaedbError, LookupError):
    """A model id that does not exist or is not published (status 'ready')."""


class ConfigurationError(SaedbError):
    """The database or environment is set up inconsistently (e.g. a second embedder)."""


class TrainingDivergedError(SaedbError, ArithmeticError):
    """Training produced non-finite weights or loss; the run is not published."""


class OlderSchemaError(ConfigurationError):
    """A read-only connection to a database whose saedb schema an older saedb wrote (``saedb upgrade``)."""


class DatabaseBusyError(ConfigurationError):
    """The database cannot serve this now: another process holds the file in a conflicting mode
    (DuckDB: one writer, or readers), or its embeddings changed under every attempt of a search."""


class TrainingFailedError(SaedbError):
    """A rank of a data-parallel run failed; the run is not published."""


def require_at_least_one(**counts: int | None) -> None:
    """InvalidInputError for the first count (keyword: its name) below 1; None is "not given"."""
    for name, value in counts.items():
        if value is not None and value < 1:
            raise InvalidInputError(f"{name} must be at least 1, got {value}")
