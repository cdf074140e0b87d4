"""Argument types shared by the verbs' parsers (argparse only: no heavy imports)."""

from __future__ import annotations

import argparse
import itertools


def split_fractions(value: str) -> tuple[float, float, float]:
    """`0.8,0.1,0.1`: train, validation and test fractions, non-negative, summing to 1."""
    try:
        parts = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.8,0.1,0.1, got {value!r}") from None
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.8,0.1,0.1, got {value!r}")
    if any(p < 0 for p in parts) or abs(sum(parts) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(f"fractions must be non-negative and summing to 1, got {value!r}")
    return parts  # type: ignore[return-value]


def width_height(value: str) -> tuple[int, int]:
    """`1280x720`: a frame size as (width, height), each side at least 64 pixels."""
    try:
        width, height = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT like 1280x720, got {value!r}") from None
    if width < 64 or height < 64:
        raise argparse.ArgumentTypeError("frames must be at least 64x64")
    return width, height


def number_list(value: str) -> tuple[float, ...]:
    """`0.5,0.5`: a comma-separated list of numbers."""
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas like 0.5,0.5, got {value!r}"
        ) from None


def level_strides(text: str) -> tuple[int, ...]:
    """`8,16,32,64`: a detector's feature levels' strides, from 4 or 8, doubling at each level."""
    try:
        strides = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give strides as 4,8,16,32,64") from None
    if any(b != 2 * a for a, b in itertools.pairwise(strides)) or strides[0] not in (4, 8):
        raise argparse.ArgumentTypeError(f"{text!r}: strides start at 4 or 8 and double at each level")
    return strides
