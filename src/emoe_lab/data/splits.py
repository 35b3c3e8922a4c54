"""Seeded train/validation/test splits of a table of examples: stratified by label where
possible, or by group so that no group (e.g. a film) falls into two splits."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

log = logging.getLogger(__name__)


def hold_out(
    frame: pd.DataFrame, fraction: float, seed: int, stratify_column: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off `fraction` of the rows, stratified by `stratify_column` when given and
    when every class has enough rows for sklearn to stratify. Returns (rest, held_out)."""
    held_rows = math.ceil(fraction * len(frame))
    if held_rows >= len(frame):
        return frame.iloc[:0], frame
    if held_rows == 0 or len(frame) < 2:
        return frame, frame.iloc[:0]

    stratify = None if stratify_column is None else frame[stratify_column].astype(str)
    try:
        rest, held_out = train_test_split(frame, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError as error:
        if stratify is None:
            raise
        # sklearn cannot stratify when a class has one row or the held-out part has fewer
        # rows than there are classes.
        log.warning("splitting without stratification: %s", error)
        rest, held_out = train_test_split(frame, test_size=fraction, random_state=seed)
    return rest, held_out


def split_three_ways(
    frame: pd.DataFrame,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    stratify_column: str | None = None,
) -> dict[str, pd.DataFrame]:
    """Split rows into train, validation and test with the given fractions of all rows."""
    rest, test = hold_out(frame, test_fraction, seed, stratify_column)
    # The validation share is of all rows, so rescale it to the rows left after the test split.
    train, validation = hold_out(
        rest, validation_fraction / (1.0 - test_fraction), seed, stratify_column
    )
    return {"train": train, "validation": validation, "test": test}


def split_by_group(
    frame: pd.DataFrame,
    group_column: str,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, pd.DataFrame]:
    """Split rows into train, validation and test so that all rows of a group land in one
    split. Groups are shuffled with `seed` and taken for test until it contains at least
    `test_fraction` of the rows. Validation is filled the same way, and the rest is train."""
    groups = np.sort(frame[group_column].unique())
    np.random.default_rng(seed).shuffle(groups)
    sizes = frame.groupby(group_column).size()

    targets = {"test": test_fraction * len(frame), "validation": validation_fraction * len(frame)}
    assignment = {}
    split_names = iter(["test", "validation"])
    current = next(split_names)
    filled = 0
    for group in groups:
        if current != "train" and filled >= targets[current]:
            current = next(split_names, "train")
            filled = 0
        assignment[group] = current
        filled += sizes[group]

    split_of_row = frame[group_column].map(assignment)
    return {name: frame[split_of_row == name] for name in ("train", "validation", "test")}


def shuffle_rows(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Return the rows in a seeded random order with a fresh 0..n-1 index."""
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
