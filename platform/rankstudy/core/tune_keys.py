"""How a study's sampled hyperparameters travel through Ray Tune, encoded and parsed here alone.

A spec path such as `training.lr` is the key `training__lr` in a searcher's suggestion (Tune
reads dots in keys as nesting); a trial reports it, and a test pass carries its chosen trial's,
as `param:training__lr`, so reported values never collide with Tune's own result keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

REPORTED = "param:"
FAILED_METRIC = -1.0  # what a deterministically failed trial reports to the searcher


def tune_key(path: str) -> str:
    """The key a spec path is suggested under."""
    return path.replace(".", "__")


def sampled(config: Mapping[str, Any]) -> dict[str, Any]:
    """Spec path -> value of every sampled hyperparameter a suggestion, a trial's report or a
    test pass carries."""
    return {k.removeprefix(REPORTED).replace("__", "."): v for k, v in config.items() if "__" in k}


def reported(params: Mapping[str, Any]) -> dict[str, Any]:
    """Sampled hyperparameters (by spec path) as a trial reports them."""
    return {f"{REPORTED}{tune_key(path)}": v for path, v in params.items()}


def reported_in(result: Mapping[str, Any]) -> dict[str, Any]:
    """What a trial reported of its hyperparameters, from its Tune result (which also holds
    its config, flattened as config/training__lr: never read as one)."""
    return {k: v for k, v in result.items() if k.startswith(REPORTED)}


def as_overrides(params: Mapping[str, Any]) -> list[str]:
    """Sampled hyperparameters (by spec path) as spec overrides."""
    return [f"{path}={json.dumps(v)}" for path, v in params.items()]
