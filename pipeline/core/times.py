"""Time on the wire: epoch nanoseconds, their units, and the one conversion to a datetime."""

from __future__ import annotations

import time

# timezone.utc, not the UTC alias of Python 3.11: the Triton image's python stub runs Python 3.10 and
# imports this module through the measurement models (infra/docker/triton.Dockerfile).
from datetime import datetime, timedelta, timezone

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)  # noqa: UP017 - Python 3.10 (see the import)


def now_ns() -> int:
    """Wall time in epoch nanoseconds: the unit of every timestamp on the wire."""
    return time.time_ns()


def ns_from_datetime(t: datetime) -> int:
    """Epoch nanoseconds of an aware datetime, exactly (integer arithmetic: the inverse of
    `datetime_from_ns`, no float rounding of the microseconds)."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError("a wire time needs a timezone (UTC)")
    return (t - _EPOCH) // timedelta(microseconds=1) * 1000


def datetime_from_ns(ns: int) -> datetime:
    """UTC datetime of an epoch-nanosecond timestamp (microsecond precision, like DateTime64(6)).

    Integer arithmetic, so a timestamp converts exactly (a float of ``ns / 1e9`` loses the last
    microseconds of today's epoch times). A timestamp beyond what a datetime holds raises
    ValueError (not OverflowError), so decoders and sinks handle it as the bad input it is.
    """
    try:
        return _EPOCH + timedelta(microseconds=ns // 1000)
    except (OverflowError, TypeError) as exc:
        raise ValueError(f"timestamp {ns!r} ns is outside the datetime range: {exc}") from None
