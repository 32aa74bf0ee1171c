"""The JSON lines `tagger predict` writes, built a chunk of records at a time.

What a line holds is the task's (tagger.tasks: `{"line": N, **record}`); this module
writes it exactly as `json.dumps(obj, ensure_ascii=False)` did, byte for byte, except that
a NaN or infinite float becomes null (JSON has neither, and a JSONL reader would choke on
json's `NaN`). It is faster because the per-token work happens in C or in NumPy:

    round_probs(x)          round(float(v), PROB_DECIMALS) of every element, vectorised
    rounded_rows(rows)      the same over a list of lists, in one pass
    jsonl_open(objects, lines, columns), jsonl_close(heads, objects, columns)
                            the start of each line ({"line": N and the first keys), then
                            its end (more keys, }, newline), so that a line can be begun
                            before the model runs; `columns[key]` writes the values of one
                            key for all records at once (json_values for any other key)
    column writers          json_values (json's C encoder, built once), json_string_values,
                            json_prob_lists (the digits of all probabilities made at once)

Shapes: a flat probability vector (N,) over all the tokens of the records, N = sum of
the records' lengths; the character matrix (N, 10) uint8 holds "d.dddddd, " per value.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from itertools import chain

import numpy as np

# what `tagger predict` keeps of each probability: round(p, PROB_DECIMALS) (json_prob_lists'
# digit tables are made for these 6)
PROB_DECIMALS = 6
_SCALE = 10.0**PROB_DECIMALS

_encode_string = json.encoder.encode_basestring  # the C escaper json uses with ensure_ascii=False


def _refuse(value):
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# json.dumps(v, ensure_ascii=False) builds a JSONEncoder and its C encoder per call; one
# C encoder built once writes the same bytes. allow_nan=False makes a NaN an error, which
# json_value answers with null. (Without the C module: the encoder's own encode.)
if json.encoder.c_make_encoder is not None:
    _c_encode = json.encoder.c_make_encoder(None, _refuse, _encode_string, None, ": ", ", ", False, False, False)

    def _encode(value) -> str:
        return "".join(_c_encode(value, 0))
else:  # pragma: no cover - CPython always has _json
    _encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode


# ----------------------------------------------------------------------------------------
# rounding


def round_probs(values) -> np.ndarray:
    """float64 array of round(float(v), PROB_DECIMALS) for every v: the floats Python gives
    (it rounds the exact binary value half-to-even, then takes the nearest double).

    rint(v * 10^d) / 10^d is that, unless v * 10^d lies within the product's rounding error
    of a half (or is huge, NaN or infinite): those few go through round() itself."""
    x = np.asarray(values, dtype=np.float64)
    scaled = x * _SCALE
    out = np.rint(scaled) / _SCALE
    with np.errstate(invalid="ignore"):
        # the product's error is below |scaled| * 2^-52 < 5e-7 for |scaled| < 2^31
        unsure = ~(np.abs(scaled) < 2.0**31) | (np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6)
    if unsure.any():
        flat, source = out.reshape(-1), x.reshape(-1)
        for i in np.flatnonzero(unsure.reshape(-1)).tolist():
            flat[i] = round(float(source[i]), PROB_DECIMALS)
    return out


def rounded_rows(rows: Sequence[Sequence[float]]) -> list[list[float]]:
    """Each row's numbers rounded (round_probs) as Python floats, all rows in one pass."""
    lengths = [len(row) for row in rows]
    flat = round_probs(np.fromiter(chain.from_iterable(rows), dtype=np.float64, count=sum(lengths))).tolist()
    return split_rows(flat, lengths)


def split_rows(flat: list, lengths: Sequence[int]) -> list[list]:
    """`flat` cut into consecutive rows of the given lengths."""
    out, at = [], 0
    for n in lengths:
        out.append(flat[at : at + n])
        at += n
    return out


# ----------------------------------------------------------------------------------------
# one value


def json_value(value) -> str:
    """Any value as json.dumps(value, ensure_ascii=False) writes it, but each NaN or
    infinite float as null."""
    try:
        return _encode(value)
    except ValueError:  # a non-finite float somewhere in it
        return _encode(_finite(value))


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------
# one key of many records: a column writer takes the values, returns their JSON texts

Column = Callable[[list], list]


def json_values(values: list) -> list[str]:
    return [json_value(v) for v in values]


def json_string_values(values: list) -> list[str]:
    return [_encode_string(v) if type(v) is str else json_value(v) for v in values]


# below this many values in all, json_prob_lists writes each list with json_value
FEW_PROBS = 256
# the three digits of 0..999 as ASCII (1000, 3), and how many of them are trailing zeros
_DIGITS3 = np.array([list(f"{k:03d}".encode("ascii")) for k in range(1000)], dtype=np.uint8)
_ZEROS3 = np.array([3 if k == 0 else 3 - len(f"{k:03d}".rstrip("0")) for k in range(1000)], dtype=np.int64)


def json_prob_lists(rows: list) -> list[str]:
    """Lists of probabilities rounded to PROB_DECIMALS, as json writes them, with the
    digits of all of them made at once. A value v with round(v, 6) == v in [1e-4, 1] or 0
    is written "0.dddddd" / "1.0" / "0.0" with trailing zeros cut: that is repr(v), since
    no shorter decimal lies as near. A list holding anything else goes to json_value
    (repr writes 1e-05 in exponent form, and NaN must become null)."""
    fits = [type(row) is list for row in rows]
    lengths = np.array([len(row) if ok else 0 for row, ok in zip(rows, fits)], dtype=np.int64)
    if lengths.sum() < FEW_PROBS:  # NumPy's fixed cost per call would exceed json's
        return json_values(rows)
    try:
        flat = np.fromiter(chain.from_iterable(r for r, ok in zip(rows, fits) if ok), dtype=np.float64,
                           count=int(lengths.sum()))
    except (TypeError, ValueError):  # a value that is no number
        return json_values(rows)
    millionths = np.rint(flat * _SCALE)
    with np.errstate(invalid="ignore"):
        good = (flat == millionths / _SCALE) & ~np.signbit(flat) & (
            ((millionths >= 100) & (millionths <= _SCALE)) | (millionths == 0))
    whole = np.where(good, millionths, 0).astype(np.int64)
    high, low = (whole // 1000) % 1000, whole % 1000  # fraction digits 1-3 and 4-6
    digits = np.maximum(1, 6 - np.where(low == 0, 3 + _ZEROS3[high], _ZEROS3[low]))  # kept ("1.0": one)
    chars = np.empty((len(flat), 10), dtype=np.uint8)  # "d.dddddd, " per value
    chars[:, 0] = np.where(whole == _SCALE, ord("1"), ord("0"))
    chars[:, 1] = ord(".")
    chars[:, 2:5], chars[:, 5:8] = _DIGITS3[high], _DIGITS3[low]
    chars[:, 8:] = (ord(","), ord(" "))
    keep = np.ones(chars.shape, dtype=bool)
    keep[:, 2:8] = np.arange(6) < digits[:, None]
    text = chars[keep].tobytes().decode("ascii")
    ends = np.concatenate([[0], np.cumsum(digits + 4)]).tolist()  # text offset of each value
    bad = np.concatenate([[0], np.cumsum(~good)]).tolist()
    first = np.concatenate([[0], np.cumsum(lengths)]).tolist()  # value index of each row
    out = []
    for k, (row, ok) in enumerate(zip(rows, fits)):
        a, b = first[k], first[k + 1]
        if not ok or bad[b] != bad[a]:
            out.append(json_value(row))
        else:
            out.append(f"[{text[ends[a] : ends[b] - 2]}]" if b > a else "[]")
    return out


# ----------------------------------------------------------------------------------------
# records


def json_members(objects: Sequence[dict], columns: dict[str, Column]) -> list[str]:
    """'"key": value, ...' of each dict (its JSON without the braces), every key's values
    written for all dicts at once by columns[key] (json_values for a key it does not name).
    Dicts with the same keys in the same order share one template."""
    groups: dict[tuple, list[int]] = {}
    for i, obj in enumerate(objects):
        groups.setdefault(tuple(obj), []).append(i)
    out: list = [""] * len(objects)
    for keys, rows in groups.items():
        if not keys:
            continue
        if not all(type(k) is str for k in keys):  # json.dumps' own rules for other keys
            for i in rows:
                out[i] = json_value(objects[i])[1:-1]
            continue
        template = ", ".join(f"{_encode_string(k).replace('%', '%%')}: %s" for k in keys)
        values = [columns.get(k, json_values)([objects[i][k] for i in rows]) for k in keys]
        for i, parts in zip(rows, zip(*values)):
            out[i] = template % parts
    return out


def jsonl_open(objects: Sequence[dict], lines: Sequence, columns: dict[str, Column]) -> list[str]:
    """'{"line": N, <members>' per dict: the start of `{"line": N, **obj, **more}`'s JSON
    (the dicts' keys: strings other than "line")."""
    lines = [str(n) if type(n) is int else json_value(n) for n in lines]
    return [f'{{"line": {n}, {m}' if m else f'{{"line": {n}' for n, m in zip(lines, json_members(objects, columns))]


def jsonl_close(heads: Sequence[str], objects: Sequence[dict], columns: dict[str, Column]) -> list[str]:
    """Each jsonl_open head with the members of its dict of more keys, closed, newline ended."""
    return [f"{h}, {m}}}\n" if m else f"{h}}}\n" for h, m in zip(heads, json_members(objects, columns))]
