"""The benchmark behind ``./scripts/bench`` (issue 6): a load generator, a bare Klein
baseline, and the measurements of a local cluster. A measuring instrument, not a test."""

from __future__ import annotations

import argparse


def whole_numbers(text: str) -> tuple[int, ...]:
    """An argparse type: ``1,16,64`` (``_`` allowed as a digit separator), each at least 1."""
    try:
        numbers = tuple(int(part.strip().replace("_", "")) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of whole numbers: {text!r}") from None
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError("every number must be at least 1")
    return numbers
