"""The files ``bestrq probe`` writes beside its cache, and their one set of checks.

    OUT/probe_<task>.json   one task's result: ``test`` scores, the dev ``curve`` per epoch,
                            ``layer_weights``, ``best_epoch``, ``epochs``, ``stopped``, the
                            per-item ``sheets`` the study resamples, the probe ``config``, the
                            ``encoder`` record it was made with and the test ``data`` it scored
    OUT/encoder.json        the encoder record: ``name``, ``spec``, ``objective``, ``step``,
                            ``pretrain_seconds``, ``pretrain_audio_hours``, ...

The writer (probes/run.py) and every reader (``bestrq report``, the study) go through here:
a file that lacks what they read is refused with a ValueError naming it and the field, the
same on writing as on reading.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..files import atomic_path, is_number
from .tasks import MAIN_METRIC

ENCODER = "encoder.json"


RESULTS = "probe_*.json"  # every task's result in a folder


def result_path(folder: str | os.PathLike, task: str) -> Path:
    return Path(folder) / f"probe_{task}.json"


def _number(value: object, missing_ok: bool = True) -> bool:
    return (value is None and missing_ok) or is_number(value)


def encoder_problem(record: object) -> str | None:
    """What is wrong with an encoder record, or None."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    for key, kind in (("name", "text"), ("objective", "text"), ("pretrain_seconds", "a number"),
                      ("pretrain_audio_hours", "a number")):
        value = record.get(key)
        if key in record and not (isinstance(value, str) if kind == "text" else _number(value)):
            return f"its {key!r} is {value!r}, not {kind}"
    return None


def result_problem(result: object, task: str) -> str | None:
    """What is wrong with a probe result of ``task``, or None."""
    if not isinstance(result, dict):
        return f"expected a JSON object, got {type(result).__name__}"
    metric = f"dev_{MAIN_METRIC[task]}"
    test, curve, weights = result.get("test"), result.get("curve"), result.get("layer_weights", [])
    if not isinstance(test, dict) or not all(map(_number, test.values())):
        return "no 'test' scores"
    if not isinstance(curve, list) or not all(isinstance(c, dict) and _number(c.get("epoch"), False)
                                              and _number(c.get(metric), False) for c in curve):
        return f"no 'curve' of epochs with 'epoch' and '{metric}'"
    if not isinstance(weights, list) or not all(map(_number, weights)):
        return "'layer_weights' is not a list of numbers"
    return None


def _read(path: Path, what: str) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:  # UnicodeDecodeError too
        raise ValueError(f"{path}: not {what}: {e}") from None


def _write(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))


def read_result(path: str | os.PathLike, task: str) -> dict:
    path = Path(path)
    result = _read(path, "a probe result")
    problem = result_problem(result, task)
    if problem:
        raise ValueError(f"{path}: not a probe result of {task}: {problem}")
    return result


def write_result(folder: str | os.PathLike, task: str, result: dict) -> Path:
    problem = result_problem(result, task)
    if problem:  # a bug here, never the user's: refuse to write what no reader takes
        raise ValueError(f"the {task} probe produced a result no reader takes: {problem}")
    path = result_path(folder, task)
    _write(path, result)
    return path


def read_encoder(path: str | os.PathLike) -> dict:
    path = Path(path)
    record = _read(path, "an encoder record")
    problem = encoder_problem(record)
    if problem:
        raise ValueError(f"{path}: not an encoder record: {problem}")
    return record


def write_encoder(folder: str | os.PathLike, record: dict) -> Path:
    problem = encoder_problem(record)
    if problem:
        raise ValueError(f"the encoder record {record!r} is not one: {problem}")
    path = Path(folder) / ENCODER
    _write(path, record)
    return path


def encoder_of(path: str | os.PathLike) -> dict | None:
    """The encoder record inside a probe result file, or None if it has none (or is no result)."""
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    encoder = result.get("encoder") if isinstance(result, dict) else None
    return encoder if isinstance(encoder, dict) else None
