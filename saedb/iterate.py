"""Iteration helpers."""

from __future__ import annotations

from itertools import islice
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter); reads lazily."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
