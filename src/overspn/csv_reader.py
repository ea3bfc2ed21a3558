"""Reading numeric CSV files in chunks, into one preallocated array, with errors that name the line and column.

:func:`parse_lines` is the reference: plain Python, one field at a time, and the only code that words errors.
:func:`read_csv` gives the same result with memory in proportion to the data: a first pass counts the lines (so the
caller can check the size before anything is allocated), then chunks of about ``CHUNK_CHARS`` characters are parsed
with numpy into the final array. A chunk the vectorised parser cannot take as it is (anything but plain numbers and
missing values, non-ASCII text, or a value the checks reject) is parsed again by :func:`parse_lines`, which raises
the error with the chunk's first line number added, or reads what the fast parser left (other scripts' digits).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from overspn.errors import DataError

__all__ = ["CHUNK_CHARS", "MISSING_TOKENS", "first_bad_state", "parse_lines", "read_csv", "scan_csv"]

MISSING_TOKENS = ("", "?", "nan", "NaN", "NA")
# Characters per chunk: large enough that numpy's per-call costs vanish (well under a millisecond a chunk), small
# enough that the chunk's temporaries (tens of bytes a character: index arrays of 8 bytes a field) stay ~10 MB.
CHUNK_CHARS = 1 << 18
_SCAN_BYTES = 1 << 20  # read() allocates its whole size up front, so this is the scan's memory
_COMMA, _NEWLINE, _ZERO, _QUESTION = ord(","), ord("\n"), ord("0"), ord("?")
# Missing values other than "nan"/"NaN", which float() already reads as NaN; compared after stripping blanks.
_MISSING_BYTES = (b"", b"?", b"NA")
_MAX_EXACT_DIGITS = 15  # an integer of up to 15 digits is below 2**53, so exact in float64 as float() reads it


def scan_csv(path: Path) -> tuple[int, int]:
    """(number of lines, number of fields of the first non-blank line; 0 if there is none) of a CSV file.

    Lines are counted as Python's text mode splits them ("\\n", "\\r\\n" and a lone "\\r" each end one), reading
    bytes, so the count costs one fast pass and no memory; blank lines are counted too, so it bounds the rows.
    """
    lines, last = 0, b""
    with open(path, "rb") as stream:
        while block := stream.read(_SCAN_BYTES):
            lines += block.count(b"\n")
            if b"\r" in block:  # rare outside Windows files; counting "\r\n" costs a pass over the block
                lines += block.count(b"\r") - block.count(b"\r\n")
            if last == b"\r" and block.startswith(b"\n"):  # a "\r\n" split between two blocks is one line end
                lines -= 1
            last = block[-1:]
    if last and last not in b"\r\n":  # the last line has no line end
        lines += 1
    with open(path, encoding="utf-8-sig", errors="replace") as stream:
        for line in stream:
            if line.strip():
                return lines, len(line.strip().split(","))
    return lines, 0


def read_csv(path: Path, lines: int, width: int, binary: bool, allow_missing: bool, discrete: bool) -> np.ndarray:
    """The rows of ``path`` as float64 ``(rows, width)``, with :func:`parse_lines`'s values, checks and errors.

    ``lines`` and ``width`` come from :func:`scan_csv`; the result is allocated once with ``lines`` rows and shrunk in
    place if blank lines made fewer rows, so the peak is the result plus one chunk's temporaries.
    """
    out = np.empty((lines, width), dtype=np.float64)
    row, line_number = 0, 1
    with open(path, encoding="utf-8-sig", errors="replace") as stream:  # "-sig": skip the mark some editors write
        while chunk := stream.readlines(CHUNK_CHARS):
            kept = [line for line in chunk if not line.isspace()]
            if kept:
                block = _parse_chunk(kept, width, allow_missing)
                if block is None or not _acceptable(block, binary, allow_missing, discrete):
                    block = parse_lines(chunk, str(path), binary, allow_missing, discrete, first_line=line_number,
                                        width=width, rows_before=row)
                if row + len(block) > len(out):  # cannot happen when the scan counted the lines; kept for safety
                    out.resize((row + len(block), width), refcheck=False)
                out[row: row + len(block)] = block
                row += len(block)
            line_number += len(chunk)
    if row == 0:
        raise DataError(f"{path}: the file is empty")
    if row < len(out):
        out.resize((row, width), refcheck=False)  # realloc: shrinks in place, no second copy of the data
    return out


def _parse_chunk(lines: list[str], width: int, allow_missing: bool) -> np.ndarray | None:
    """Non-blank ``lines`` as float64 ``(len(lines), width)``, or None when they need :func:`parse_lines`.

    None also when a field is not a number (or is missing and ``allow_missing`` is false): the caller's slow pass
    finds and words the first error. Values are not checked here for infinity, binarity or states.
    """
    text = "".join(lines)
    if not text.endswith("\n"):
        text += "\n"
    # Non-ASCII text goes to the reference parser (float() reads other scripts' digits); NUL would be dropped by
    # numpy's byte strings, turning "1\0" into 1.
    if not text.isascii() or "\x00" in text:
        return None
    raw, rows = text.encode("ascii"), len(lines)
    values = _single_characters(raw, rows, width, allow_missing)
    if values is not None:
        return values
    codes = np.frombuffer(raw, dtype=np.uint8)
    if np.count_nonzero((codes - _ZERO) > 9) > rows * width * 5 // 4:  # uint8 wraps: one test for "not a digit"
        # Mostly not integers (decimals...): numpy's C parser first, the fastest; it reads a subset of float()'s
        # syntax, with the same values, and fails on missing values or "1_0", which then go through float().
        try:
            values = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.float64, comments=None, ndmin=2)
            return values if values.shape == (rows, width) else None
        except ValueError:
            pass
    ends = np.flatnonzero((codes == _COMMA) | (codes == _NEWLINE))  # the delimiter after each field
    # There are exactly `rows` newlines; if every width-th delimiter is one, every line has width fields.
    if ends.size != rows * width or not (codes[ends[width - 1::width]] == _NEWLINE).all():
        return None
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    lengths = ends - starts
    # Fields that are not plain integers ("?", "0.5", " 1"...) go through float(); the rest, all of binary or
    # discrete data, are assembled digit by digit, exactly (15 digits stay below 2**53).
    other = lengths > _MAX_EXACT_DIGITS
    stray = np.flatnonzero(((codes - _ZERO) > 9) & (codes != _COMMA) & (codes != _NEWLINE))
    other[np.searchsorted(ends, stray)] = True
    values = np.empty(ends.size, dtype=np.float64)
    if np.count_nonzero(other) > ends.size // 4:  # mostly non-integers: one split beats slicing field by field
        converted = _convert(raw.replace(b"\n", b",").split(b",")[:-1], allow_missing)
        if converted is None:
            return None
        values[:] = converted
        return values.reshape(rows, width)
    if other.any():
        converted = _convert([raw[a:b] for a, b in zip(starts[other].tolist(), ends[other].tolist())], allow_missing)
        if converted is None:
            return None
        values[other] = converted
        lengths[other] = 0
    empty = (lengths == 0) & ~other
    if not allow_missing and empty.any():
        return None
    longest = int(lengths.max())
    if longest == 1:  # one digit per field: one gather (empty and other fields are overwritten)
        integers = codes[starts] - _ZERO
    else:
        integers = np.zeros(ends.size, dtype=np.int64)
        for offset in range(longest):
            has = lengths > offset
            integers[has] = integers[has] * 10 + (codes[starts[has] + offset] - _ZERO)
    np.copyto(values, integers, where=~other)
    values[empty] = np.nan
    return values.reshape(rows, width)


def _single_characters(raw: bytes, rows: int, width: int, allow_missing: bool) -> np.ndarray | None:
    """``rows`` rows of one-character fields, "d,d,...,d\\n" as in the binary benchmarks, read without index arrays;
    with ``allow_missing``, empty fields and ``?`` are NaN. None if ``raw`` is not laid out so.
    """
    codes = np.frombuffer(raw, dtype=np.uint8)
    if allow_missing and len(codes) < 2 * width * rows:
        # A "?" put in each empty field (a delimiter at the start or after another) may restore the layout.
        delimiter = (codes == _COMMA) | (codes == _NEWLINE)
        empty = np.flatnonzero(delimiter[1:] & delimiter[:-1]) + 1
        codes = np.insert(codes, np.concatenate([[0], empty]) if delimiter[0] else empty, _QUESTION)
    if len(codes) != 2 * width * rows:
        return None
    grid = codes.reshape(rows, 2 * width)
    if not ((grid[:, 1:-1:2] == _COMMA).all() and (grid[:, -1] == _NEWLINE).all()):
        return None
    characters = grid[:, 0::2]
    values = (characters - _ZERO).astype(np.float64)
    other = values > 9  # uint8 wraps: every non-digit
    if other.any():
        if not allow_missing or not (characters[other] == _QUESTION).all():
            return None
        values[other] = np.nan
    return values


def _convert(tokens: list[bytes], allow_missing: bool) -> np.ndarray | None:
    """``tokens`` read as :func:`parse_lines` reads fields (missing ones as NaN), or None if one is not a number."""
    array = np.array(tokens, dtype=bytes)
    values = np.full(len(tokens), np.nan)
    present = np.ones(len(tokens), dtype=bool)
    if allow_missing:
        stripped = np.char.strip(array)
        for token in _MISSING_BYTES:
            present &= stripped != token
    try:
        values[present] = array[present].astype(np.float64)  # numpy's bytes-to-float cast is float() on each
    except ValueError:
        return None
    return values


def _acceptable(block: np.ndarray, binary: bool, allow_missing: bool, discrete: bool) -> bool:
    """Whether every value passes :func:`parse_lines`'s checks (finite, observed unless allowed, binary, states)."""
    if np.isinf(block).any() or (not allow_missing and np.isnan(block).any()):
        return False
    return not (binary or discrete) or first_bad_state(block, binary) is None


def first_bad_state(array: np.ndarray, binary: bool) -> tuple[int, int] | None:
    """(row, column) of the first observed value that is not 0/1 (``binary``) or not a non-negative integer."""
    observed = ~np.isnan(array)
    if binary:
        bad = observed & (array != 0) & (array != 1)
    else:
        bad = observed & ((array < 0) | (array != np.round(array)))
    if not bad.any():
        return None
    row, column = np.argwhere(bad)[0]
    return int(row), int(column)


def parse_lines(lines: Iterable[str], source: str, binary: bool, allow_missing: bool, discrete: bool, *,
                first_line: int = 1, width: int | None = None, rows_before: int = 0) -> np.ndarray:
    """The reference parser: ``lines`` (blank ones skipped) as float64 rows, each field checked; errors name
    ``source``, the line and the column.

    For a chunk of a file, ``first_line`` is the number of its first line, ``width`` the number of fields of the
    file's first row and ``rows_before`` the rows before the chunk (a chunk may then have no rows); without
    ``width``, a file with no rows is an error.
    """
    rows: list[list[float]] = []
    for line_number, line in enumerate(lines, start=first_line):
        text = line.strip()
        if not text:
            continue
        fields = text.split(",")
        if width is None:
            width = len(fields)
        elif len(fields) != width:
            raise DataError(f"{source}, line {line_number}: {len(fields)} columns, expected {width} as on the first "
                            "row")
        row = []
        for column, field in enumerate(fields):
            token = field.strip()
            where = f"{source}, line {line_number}, column {column}"
            if token in MISSING_TOKENS:
                if not allow_missing:
                    shown = "an empty field" if not token else f"{token!r}"
                    raise DataError(f"{where}: missing value ({shown}) not allowed here")
                row.append(math.nan)
                continue
            try:
                value = float(token)
            except ValueError:
                hint = _hint(token, first_row=not rows and not rows_before)
                raise DataError(f"{where}: {token!r} is not a number{hint}") from None
            if math.isnan(value):
                if not allow_missing:
                    raise DataError(f"{where}: missing value ({token!r}) not allowed here")
            elif math.isinf(value):
                raise DataError(f"{where}: value {token!r} is not finite")
            elif binary and value not in (0.0, 1.0):
                raise DataError(f"{where}: value {token!r} is not binary (0 or 1)")
            elif discrete and (value < 0 or value != round(value)):
                raise DataError(f"{where}: value {token!r} is not a state (a non-negative integer)")
            row.append(value)
        rows.append(row)
    if not rows and width is None:
        raise DataError(f"{source}: the file is empty")
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), width or 0)


def _hint(token: str, first_row: bool) -> str:
    """Why a field may not be a number: another separator, or a header row."""
    if any(separator in token for separator in (";", "\t", "|")):
        return " (fields must be separated by commas)"
    if first_row:
        return " (the file must not have a header row)"
    return ""
