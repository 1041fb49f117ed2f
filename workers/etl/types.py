"""Column types of a loaded table, strict parsing of text into them, and inference.

Six types: int, float, text, bool, date, timestamp. Text is parsed strictly and column at a time
(pyarrow compute, pandas for ISO 8601 timestamps): a value that is not exactly of its column's
type makes its row bad, with the reason, so the row can be quarantined rather than loaded wrong.
`12.0` is an int, `1.5` is not; dates are ISO (`2013-01-31`, and `2013-02-30` is refused);
timestamps are ISO 8601 with an optional offset (`Z`, `+02:00`), stored as UTC without a zone.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

ARROW: dict[str, pa.DataType] = {
    "int": pa.int64(), "float": pa.float64(), "text": pa.string(), "bool": pa.bool_(),
    "date": pa.date32(), "timestamp": pa.timestamp("us")}
POSTGRES: dict[str, str] = {
    "int": "bigint", "float": "double precision", "text": "text", "bool": "boolean",
    "date": "date", "timestamp": "timestamp"}
TRUE = ["true", "t", "yes", "y", "1"]
FALSE = ["false", "f", "no", "n", "0"]
# What inference calls a bool: words only, so a column of 0 and 1 stays an int.
BOOL_WORDS = ["true", "false"]

_INT = r"^[+-]?\d+(\.0*)?$"
_FLOAT = r"(?i)^[+-]?((\d+\.?\d*|\.\d+)(e[+-]?\d+)?|nan|inf|infinity)$"
_DATE = r"^\d{4}-\d{2}-\d{2}$"
_TIMESTAMP = (r"^\d{4}-\d{2}-\d{2}([T ]\d{2}(:\d{2}(:\d{2}(\.\d{1,9})?)?)?)?"
              r"(Z|[+-]\d{2}(:?\d{2})?)?$")
_ZONE = r"(Z|[+-]\d{2}(:?\d{2})?)$"
INT64_DIGITS = 18  # a value of at most this many digits always fits in int64


def schema(columns: list[tuple[str, str]]) -> pa.Schema:
    return pa.schema([(name, ARROW[kind]) for name, kind in columns])


def _strings(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        values = pa.array(values, pa.string())
    if values.type != pa.string():
        values = values.cast(pa.string())
    return values


def _false(n: int) -> pa.Array:
    return pa.array(np.zeros(n, dtype=bool))


def _fill(mask: pa.Array) -> pa.Array:
    return pc.fill_null(mask, False)


def parse(values, kind: str, nulls: list[str] | tuple[str, ...] = ()) -> tuple[pa.Array,
                                                                                pa.Array]:
    """Text values -> (the typed array, a bool array: True where the value is not of the
    type). Missing values (None, or one of `nulls`; for types other than text, also an empty
    field, after trimming spaces) become nulls and are never bad."""
    raw = _strings(values)
    if kind == "text":
        if nulls:
            raw = pc.if_else(_fill(pc.is_in(raw, pa.array(list(nulls), pa.string()))),
                             pa.scalar(None, pa.string()), raw)
        return raw, _false(len(raw))
    # Beyond text, an empty field can only mean a missing value, whatever `nulls` says.
    text = _missing_as_null(raw, [*nulls, ""])
    present = pc.is_valid(text)
    fast = _fast(text, kind)
    if fast is not None:
        return fast, _false(len(text))
    ok, typed = _PARSERS[kind](text)
    ok = _fill(ok)
    bad = pc.and_(present, pc.invert(ok))
    return pc.if_else(bad, pa.scalar(None, typed.type), typed), bad


def _head(text: pa.Array, n: int = 64) -> pa.Array:
    return pc.drop_null(text.slice(0, 16 * n))[:n]


def _sample_fails(text: pa.Array, kind: str) -> bool:
    """Whether one of the first non-missing values is not of the type: cheap, and spares a
    whole-column attempt that is bound to fail."""
    ok, _ = _PARSERS[kind](_head(text))
    return not pc.all(_fill(ok)).as_py()


def _fast(text: pa.Array, kind: str) -> pa.Array | None:
    """Arrow's own cast, where it is as strict as the parsers below and every value passes
    (the usual case); None to parse value by value."""
    if _sample_fails(text, kind):
        return None
    try:
        if kind == "int":
            if (pc.any(pc.match_substring(text, "x")).as_py()
                    or pc.any(pc.match_substring(text, "X")).as_py()):
                return None  # Arrow reads 0x10 as 16; the int parser does not
            return pc.cast(text, pa.int64())
        if kind == "float":
            return pc.cast(text, pa.float64())
        if kind == "date":
            return pc.cast(text, pa.date32())
        if kind == "timestamp":
            zoned = pc.any(pc.match_substring_regex(_head(text), _ZONE)).as_py()
            if not zoned:
                return pc.cast(text, pa.timestamp("us"))
            return pc.cast(text, pa.timestamp("us", "UTC")).cast(pa.timestamp("us"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return None


def _only(text: pa.Array, ok: pa.Array, fallback: str) -> pa.Array:
    """The good values, and a harmless stand-in where a value is bad (nulls stay null)."""
    return pc.if_else(ok, text, pc.if_else(pc.is_valid(text), pa.scalar(fallback),
                                           pa.scalar(None, pa.string())))


def _parse_int(text: pa.Array):
    ok = _fill(pc.match_substring_regex(text, _INT))
    digits = pc.replace_substring_regex(text, r"^[+-]|\.0*$", "")
    long = _fill(pc.and_(ok, pc.greater(pc.utf8_length(digits), INT64_DIGITS)))
    if pc.any(long).as_py():
        # The rare long ones, checked one by one against int64's range.
        fits = [(-(2**63) <= int(v.split(".")[0]) < 2**63) if v is not None and is_long
                else None for v, is_long in zip(text.to_pylist(), long.to_pylist(), strict=True)]
        ok = pc.and_(ok, pc.invert(pc.and_(long, pc.invert(_fill(pa.array(fits, pa.bool_()))))))
    whole = pc.replace_substring_regex(text, r"^\+|\.0*$", "")
    return ok, pc.cast(_only(whole, ok, "0"), pa.int64())


def _parse_float(text: pa.Array):
    ok = _fill(pc.match_substring_regex(text, _FLOAT))
    return ok, pc.cast(_only(text, ok, "0"), pa.float64())


def _parse_bool(text: pa.Array):
    lower = pc.utf8_lower(text)
    true = _fill(pc.is_in(lower, pa.array(TRUE)))
    false = _fill(pc.is_in(lower, pa.array(FALSE)))
    ok = pc.or_(true, false)
    return ok, pc.if_else(ok, true, pa.scalar(None, pa.bool_()))


def _parse_date(text: pa.Array):
    shaped = _fill(pc.match_substring_regex(text, _DATE))
    parsed = pc.strptime(_only(text, shaped, "1970-01-01"), format="%Y-%m-%d", unit="s",
                         error_is_null=True)
    # strptime rolls 2013-02-30 over to March: a value is good only if it reads back the same.
    ok = _fill(pc.and_(shaped, pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), text)))
    return ok, pc.cast(pc.if_else(ok, parsed, pa.scalar(None, parsed.type)), pa.date32())


def _parse_timestamp(text: pa.Array):
    shaped = _fill(pc.match_substring_regex(text, _TIMESTAMP))
    if not pc.any(shaped).as_py():
        return shaped, pa.nulls(len(text), pa.timestamp("us"))
    candidates = pc.if_else(shaped, text, pa.scalar(None, pa.string()))
    series = pd.Series(candidates.to_pylist(), dtype=object)
    stamps = pd.to_datetime(series, format="ISO8601", utc=True, errors="coerce")
    parsed = pa.array(stamps.dt.tz_localize(None), from_pandas=True).cast(
        pa.timestamp("us"), safe=False)
    ok = _fill(pc.and_(shaped, pc.is_valid(parsed)))
    return ok, pc.if_else(ok, parsed, pa.scalar(None, pa.timestamp("us")))


_PARSERS = {"int": _parse_int, "float": _parse_float, "bool": _parse_bool, "date": _parse_date,
            "timestamp": _parse_timestamp}


def text_of(value) -> str | None:
    """A JSON value as the text the parsers read (objects and arrays as JSON)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def kind_of_arrow(dtype: pa.DataType) -> str:
    """The column type a typed (Parquet) column loads as."""
    if pa.types.is_boolean(dtype):
        return "bool"
    if pa.types.is_integer(dtype):
        return "int"
    if pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return "float"
    if pa.types.is_date(dtype):
        return "date"
    if pa.types.is_timestamp(dtype):
        return "timestamp"
    return "text"


def convert(values, kind: str, nulls=()) -> tuple[pa.Array, pa.Array]:
    """Any column (text or typed, from Parquet) -> (typed array, bad mask). A typed column of
    a compatible type is cast directly; anything else is read as text."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    dtype = values.type
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_null(dtype):
        return parse(values, kind, nulls)
    target = ARROW[kind]
    direct = (
        (kind == "int" and pa.types.is_integer(dtype))
        or (kind == "float" and (pa.types.is_integer(dtype) or pa.types.is_floating(dtype)
                                 or pa.types.is_decimal(dtype)))
        or (kind == "bool" and pa.types.is_boolean(dtype))
        or (kind == "date" and pa.types.is_date(dtype))
        or (kind == "timestamp" and (pa.types.is_timestamp(dtype) or pa.types.is_date(dtype))))
    if direct:
        try:
            if pa.types.is_timestamp(dtype) and dtype.tz is not None:
                values = values.cast(pa.timestamp(dtype.unit))  # UTC wall time
            return values.cast(target, safe=kind != "timestamp"), _false(len(values))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # out of range (a uint64 over int64): read as text, bad where it does not fit
    try:
        text = values.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        text = pa.array([text_of(v) for v in values.to_pylist()], pa.string())
    return parse(text, kind, nulls)


def describe_bad(kind: str, value) -> str:
    article = "an" if kind[0] in "aeiou" else "a"
    shown = value if not isinstance(value, str) or len(value) <= 80 else value[:77] + "..."
    return f"{shown!r} is not {article} {kind}"


def _missing_as_null(column: pa.Array, nulls) -> pa.Array:
    text = pc.utf8_trim_whitespace(column)
    if nulls:
        text = pc.if_else(_fill(pc.is_in(text, pa.array(list(nulls), pa.string()))),
                          pa.scalar(None, pa.string()), text)
    return text


class Inference:
    """Infers each column's type from batches of text: the first of bool, int, float, date,
    timestamp that every non-missing value so far parses as, else text. Columns first seen in
    a later batch (JSON lines) join then."""

    ORDER = ("bool", "int", "float", "date", "timestamp")

    def __init__(self, names: list[str] | None = None, nulls=()):
        self.names: list[str] = []
        self.nulls = list(nulls)
        self.candidates: dict[str, list[str]] = {}
        self.seen: dict[str, int] = {}
        for name in names or []:
            self._add(name)

    def _add(self, name: str) -> None:
        self.names.append(name)
        self.candidates[name] = list(self.ORDER)
        self.seen[name] = 0

    def feed(self, columns: dict[str, pa.Array]) -> None:
        for name in columns:
            if name not in self.candidates:
                self._add(name)
        for name in self.names:
            column = columns.get(name)
            if column is None or not self.candidates[name]:
                continue
            column = _strings(column)
            missing_as_null = _missing_as_null(column, [*self.nulls, ""])
            present = pc.is_valid(missing_as_null)
            self.seen[name] += pc.sum(present.cast(pa.int64())).as_py() or 0
            keep = []
            for kind in self.candidates[name]:
                if kind == "bool":
                    words = pc.utf8_lower(pc.utf8_trim_whitespace(column))
                    good = _fill(pc.is_in(words, pa.array(BOOL_WORDS)))
                    if not pc.any(pc.and_(present, pc.invert(good))).as_py():
                        keep.append(kind)
                elif (not _sample_fails(missing_as_null, kind)
                      and not pc.any(parse(column, kind, self.nulls)[1]).as_py()):
                    keep.append(kind)
            self.candidates[name] = keep

    def result(self) -> list[tuple[str, str]]:
        return [(name, self.candidates[name][0] if self.seen[name] and self.candidates[name]
                 else "text") for name in self.names]
