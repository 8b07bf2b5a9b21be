"""What validating a batch chunk by chunk needs beyond one chunk: its keys across chunks, and one document.

A key repeated in two chunks must break the uniqueness expectation for both rows, as it would in one piece
(:func:`repeated_keys`); the chunks' Great Expectations documents become one, bounded in size whatever the
batch's (:func:`merged`, :func:`bounded`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

SAMPLES = 20  # unexpected values and rows a kept validation document lists per expectation


def key_hashes(codes: np.ndarray) -> np.ndarray:
    """One 64-bit number per row mixing its key codes (``key_codes`` in :mod:`tasks.ingest.validation`)."""
    mixed = np.zeros(len(codes), dtype=np.uint64)
    for column in codes.T:
        mixed = _mix(mixed ^ column.view(np.uint64))
    return mixed


def repeated_keys(
    hashes: list[np.ndarray], rows: int, keys_again: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
) -> np.ndarray:
    """Which rows of a batch (``rows`` in all) share their primary key with another row of the batch.

    ``hashes``: the :func:`key_hashes` of each chunk's rows with a whole key, kept by a first pass over the
    batch's key columns: 8 bytes per row. They are sorted; only when some repeat does ``keys_again`` read the
    keys once more (each chunk's rows' positions in the batch and their key codes), and the rows whose numbers
    repeat are compared on their exact codes. The answer is exact, and memory is two 8-byte numbers per row.
    """
    repeated = np.zeros(rows, dtype=bool)
    if not hashes:
        return repeated
    ordered = np.concatenate(hashes)
    ordered.sort()
    same = ordered[1:] == ordered[:-1]
    if not same.any():
        return repeated
    twice = np.unique(ordered[1:][same])
    del ordered, same
    positions, exact = [], []
    for rows_of, codes in keys_again():  # the few rows whose numbers repeat, with their exact codes
        candidates = np.isin(key_hashes(codes), twice)
        positions.append(rows_of[candidates])
        exact.append(codes[candidates])
    codes = np.ascontiguousarray(np.concatenate(exact))
    as_records = codes.view([(f"k{i}", np.int64) for i in range(codes.shape[1])]).ravel()
    _, inverse, counts = np.unique(as_records, return_inverse=True, return_counts=True)
    repeated[np.concatenate(positions)] = counts[inverse.ravel()] > 1
    return repeated


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every bit of the input moves every bit of the output."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return np.asarray(x ^ (x >> np.uint64(31)), dtype=np.uint64)


def bounded(document: dict[str, Any] | None, samples: int = SAMPLES) -> dict[str, Any] | None:
    """A validation document as kept in quarantine: counts whole, lists of values and rows cut to ``samples``.

    Every rejected row is kept with its reasons in ``rejected.parquet``; the document says how many broke each
    expectation and shows examples, so its size does not grow with the batch.
    """
    if document is None:
        return None
    out = {**document, "results": []}
    for item in document.get("results", []):
        result = dict(item.get("result") or {})
        for name, value in list(result.items()):
            if isinstance(value, list) and len(value) > samples:
                result[name] = value[:samples]
                result[f"{name}_truncated_from"] = len(value)
        out["results"].append({**item, "result": result})
    return out


def merged(documents: list[dict[str, Any]], samples: int = SAMPLES) -> dict[str, Any] | None:
    """The validation documents of a batch's chunks as one: verdicts and counts over every chunk, samples kept.

    Each chunk ran the same suite, so their results line up one for one.
    """
    if not documents:
        return None
    first = bounded(documents[0], samples) or {}
    results = first["results"]
    for document in documents[1:]:
        for item, other in zip(results, document.get("results", []), strict=True):
            item["success"] = bool(item["success"] and other["success"])
            result, more = item["result"], other.get("result") or {}
            for name, value in more.items():
                if isinstance(value, bool) or name.endswith("_percent"):
                    continue
                if isinstance(value, int | float) and isinstance(result.get(name, 0), int | float):
                    result[name] = result.get(name, 0) + value
                elif isinstance(value, list):
                    kept = [*result.get(name, []), *value]
                    if len(kept) > samples:
                        total = result.get(f"{name}_truncated_from", len(result.get(name, []))) + len(value)
                        result[f"{name}_truncated_from"], kept = total, kept[:samples]
                    result[name] = kept
    for item in results:  # a share of one chunk is not the batch's
        item["result"] = {k: v for k, v in item["result"].items() if "_percent" not in k}
    first["success"] = all(item["success"] for item in results)
    first["chunks"] = len(documents)
    return first
