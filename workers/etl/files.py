"""Reading CSV, JSON-lines and Parquet files in pieces, each record with its line number.

A file is split into pieces of whole records: by byte offsets for text files (a scan that keeps
track of quoted fields, so a quoted newline never splits a record) and by row ranges for Parquet.
Every byte of a text file after its header belongs to exactly one piece, so pieces read
separately (on different workers) give each record once. Reading yields batches of columns (text
for CSV and JSON lines, typed for Parquet) with each record's line number (for Parquet: its row
number, from 1) and the records that could not be read as rows at all (wrong number of fields,
not JSON), which the caller quarantines.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from workers.etl.types import text_of

BATCH_ROWS = 20_000
BLOCK_BYTES = 2 << 20  # CSV is read in blocks of about this many bytes of whole records
csv.field_size_limit(64 * 1024 * 1024)


@dataclass
class Piece:
    """Part of one file: [start, end) in bytes (text) or rows (Parquet); end None: to its end.
    first_line is the line (or row) number of its first record; rows, when known, how many
    records it holds."""

    start: int
    end: int | None
    first_line: int
    rows: int | None = None


@dataclass
class Batch:
    lines: list[int]
    columns: dict[str, pa.Array]
    rejects: list[dict] = field(default_factory=list)  # {"line", "reason", "values"}
    position: int = 0  # bytes (or rows) of the piece read so far, for a progress estimate


# --- CSV -------------------------------------------------------------------------------------


def csv_header(path: Path, delimiter: str = ",") -> tuple[list[str], int, int]:
    """The header's column names, the byte offset where the data starts and the line number
    of its first line. An empty file has no columns."""
    head, lines, quotes, offset = b"", 0, 0, 0
    with open(path, "rb") as f:
        for line in f:
            lines += 1
            offset += len(line)
            if not head and not line.strip():
                continue  # blank lines before the header
            head += line
            quotes += line.count(b'"')
            if quotes % 2 == 0:
                break
    if not head:
        return [], offset, lines + 1
    text = head.decode("utf-8-sig")
    names = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), [])
    return [name.strip() for name in names], offset, lines + 1


def scan_pieces(path: Path, start: int, first_line: int, chunk_rows: int, *,
                quoted: bool) -> list[Piece]:
    """Cut a text file (from `start`) into pieces of `chunk_rows` records. A record starts at
    a non-blank line outside quotes (CSV quotes: a line with an odd number of '"' opens or
    closes a quoted field). Pieces without records are left out."""
    pieces: list[Piece] = []
    offset, line_no, in_quotes = start, first_line, False
    piece_start, piece_line, count = start, first_line, 0
    with open(path, "rb") as f:
        f.seek(start)
        for line in f:
            if not in_quotes and line.strip():
                if count == chunk_rows:
                    pieces.append(Piece(piece_start, offset, piece_line, count))
                    piece_start, piece_line, count = offset, line_no, 0
                count += 1
            if quoted and line.count(b'"') % 2:
                in_quotes = not in_quotes
            offset += len(line)
            line_no += 1
    if count:
        pieces.append(Piece(piece_start, None, piece_line, count))
    return pieces


class _Range(io.RawIOBase):
    """The bytes [start, end) of an open binary file, as a stream."""

    def __init__(self, f, start: int, end: int | None):
        f.seek(start)
        self.f = f
        self.left = None if end is None else max(0, end - start)
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer)
        if self.left is not None:
            view = view[:self.left]
        if not len(view):
            return 0
        got = self.f.readinto(view) or 0
        self.position += got
        if self.left is not None:
            self.left -= got
        return got


def _text(f, piece: Piece) -> tuple[_Range, io.TextIOWrapper]:
    stream = _Range(f, piece.start, piece.end)
    return stream, io.TextIOWrapper(io.BufferedReader(stream, 1 << 20), encoding="utf-8",
                                    newline="")


def _columns(rows: list[list[str]], names: list[str]) -> dict[str, pa.Array]:
    if not rows:
        return {name: pa.array([], pa.string()) for name in names}
    return {name: pa.array(values, pa.string())
            for name, values in zip(names, zip(*rows, strict=True), strict=True)}


def read_csv(path: Path, piece: Piece, header: list[str], wanted: list[str], *,
             delimiter: str = ",", block_bytes: int = BLOCK_BYTES) -> Iterator[Batch]:
    """The piece's records as text columns (only the wanted ones), a batch per block of
    whole records. A block is parsed by pyarrow when every record in it can be numbered (the
    count pyarrow parsed matches the records found between unquoted newlines, and none had a
    wrong number of fields); else by Python's csv module, record by record."""
    with open(path, "rb") as f:
        stream = _Range(f, piece.start, piece.end)
        line = piece.first_line
        for block in _blocks(stream, block_bytes):
            batch = _fast_block(block, line, header, wanted, delimiter)
            if batch is None:
                batch = _slow_block(path, block, line, header, wanted, delimiter)
            batch.position = stream.position
            line += block.count(b"\n")
            yield batch


def _blocks(stream: _Range, size: int) -> Iterator[bytes]:
    """The stream in blocks of about `size` bytes that end where a record ends (a newline
    outside quotes)."""
    carry = b""
    while True:
        chunk = stream.read(size)
        if not chunk:
            if carry:
                yield carry
            return
        block = carry + chunk
        cut = _last_boundary(block)
        if cut < 0:
            carry = block  # one record longer than a block: read on
            continue
        carry = block[cut + 1:]
        yield block[:cut + 1]


def _last_boundary(block: bytes) -> int:
    arr = np.frombuffer(block, np.uint8)
    newlines = np.flatnonzero(arr == 10)
    if not newlines.size:
        return -1
    quotes = np.searchsorted(np.flatnonzero(arr == 34), newlines)  # '"' before each newline
    outside = newlines[quotes % 2 == 0]
    return int(outside[-1]) if outside.size else -1


def record_lines(block: bytes, first_line: int) -> np.ndarray:
    """The line number of each record in a block of whole records: records start at
    non-blank lines that follow a newline outside quotes."""
    arr = np.frombuffer(block, np.uint8)
    n = arr.size
    if not n:
        return np.zeros(0, np.int64)
    newlines = np.flatnonzero(arr == 10)
    quotes = np.searchsorted(np.flatnonzero(arr == 34), newlines)
    starts = np.concatenate(([0], newlines + 1))
    outside = np.concatenate(([True], quotes % 2 == 0))
    inside_block = starts < n
    at = np.minimum(starts, n - 1)
    after = np.minimum(starts + 1, n - 1)
    blank = (arr[at] == 10) | ((arr[at] == 13) & (arr[after] == 10) & (starts + 1 < n))
    return first_line + np.flatnonzero(outside & inside_block & ~blank)


def _fast_block(block: bytes, first_line: int, header: list[str], wanted: list[str],
                delimiter: str) -> Batch | None:
    invalid = []

    def on_invalid(row):
        invalid.append(row)
        return "skip"

    try:
        table = pacsv.read_csv(
            io.BytesIO(block),
            read_options=pacsv.ReadOptions(column_names=header, use_threads=False,
                                           block_size=max(len(block) + 1, 1 << 20)),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True,
                                              invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(header, pa.string()), include_columns=wanted,
                strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    lines = record_lines(block, first_line)
    if invalid or table.num_rows != lines.size:
        return None
    return Batch(lines.tolist(), {name: table.column(name).combine_chunks()
                                  for name in wanted})


def _slow_block(path: Path, block: bytes, first_line: int, header: list[str],
                wanted: list[str], delimiter: str) -> Batch:
    width = len(header)
    index = [header.index(name) for name in wanted]
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + block[:exc.start].count(b"\n")
        raise ValueError(f"{path.name}: not UTF-8 text, at line {line} ({exc.reason})"
                         ) from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=False)
    rows: list[list[str]] = []
    lines: list[int] = []
    rejects: list[dict] = []
    before = 0
    while True:
        line = first_line + before
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            rejects.append({"line": line, "reason": f"unreadable CSV: {exc}", "values": None})
            before = reader.line_num
            continue
        before = reader.line_num
        if not fields:
            continue  # a blank line
        if len(fields) != width:
            rejects.append({"line": line, "values": fields,
                            "reason": f"expected {width} fields, found {len(fields)}"})
            continue
        rows.append([fields[i] for i in index])
        lines.append(line)
    return Batch(lines, _columns(rows, wanted), rejects)


# --- JSON lines ------------------------------------------------------------------------------


def read_jsonl(path: Path, piece: Piece, wanted: list[str] | None, *,
               batch_rows: int = BATCH_ROWS) -> Iterator[Batch]:
    """The piece's objects as text columns. With wanted None, the columns are every key seen
    (in order of appearance; for inference)."""
    with open(path, "rb") as f:
        stream, text = _text(f, piece)
        names = list(wanted) if wanted is not None else []
        known = set(names)
        records: list[dict] = []
        lines: list[int] = []
        rejects: list[dict] = []
        line = piece.first_line - 1
        while True:
            try:
                raw = text.readline()
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path.name}: not UTF-8 text, near line {line + 1} "
                                 f"({exc.reason})") from None
            if not raw:
                break
            line += 1
            stripped = raw.strip().lstrip("\ufeff")
            if not stripped:
                continue
            try:
                record = json.loads(stripped)
            except ValueError as exc:
                rejects.append({"line": line, "reason": f"not JSON: {exc}",
                                "values": stripped[:1000]})
                continue
            if not isinstance(record, dict):
                rejects.append({"line": line, "reason": "not a JSON object",
                                "values": record})
                continue
            if wanted is None:
                for key in record:
                    if key not in known:
                        known.add(key)
                        names.append(key)
            records.append(record)
            lines.append(line)
            if len(records) >= batch_rows:
                yield _json_batch(records, lines, names, rejects, stream.position)
                records, lines, rejects = [], [], []
        if records or rejects:
            yield _json_batch(records, lines, names, rejects, stream.position)


def _json_batch(records, lines, names, rejects, position) -> Batch:
    columns = {name: pa.array([text_of(r.get(name)) for r in records], pa.string())
               for name in names}
    return Batch(lines, columns, rejects, position)


# --- Parquet ---------------------------------------------------------------------------------


def parquet_rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def parquet_columns(path: Path) -> list[tuple[str, pa.DataType]]:
    schema = pq.read_schema(path)
    return [(f.name, f.type) for f in schema]


def read_parquet(path: Path, piece: Piece, wanted: list[str], *,
                 batch_rows: int = BATCH_ROWS) -> Iterator[Batch]:
    """Rows [start, end) of a Parquet file, typed, reading only the row groups they are in."""
    pf = pq.ParquetFile(path)
    end = pf.metadata.num_rows if piece.end is None else min(piece.end, pf.metadata.num_rows)
    groups, first_row, row = [], None, 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if row < end and row + n > piece.start:
            groups.append(g)
            first_row = row if first_row is None else first_row
        row += n
    if not groups:
        return
    row = first_row
    for batch in pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=wanted):
        lo, hi = max(piece.start, row), min(end, row + batch.num_rows)
        if hi > lo:
            part = batch.slice(lo - row, hi - lo)
            yield Batch(list(range(lo + 1, hi + 1)),
                        {name: part.column(name) for name in wanted}, [], hi - piece.start)
        row += batch.num_rows
        if row >= end:
            break


def read(path: Path, fmt: str, piece: Piece, *, header: list[str], wanted: list[str],
         delimiter: str = ",", batch_rows: int = BATCH_ROWS) -> Iterator[Batch]:
    if fmt == "csv":
        return read_csv(path, piece, header, wanted, delimiter=delimiter)
    if fmt == "jsonl":
        return read_jsonl(path, piece, wanted, batch_rows=batch_rows)
    if fmt == "parquet":
        return read_parquet(path, piece, wanted, batch_rows=batch_rows)
    raise ValueError(f"unknown format {fmt!r}")
