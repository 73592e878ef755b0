"""Local data files as users write them: what is wrong with one, said with its line and the fix.

`datasets` reports a bad file as whatever its parser raised ("StopIteration" for an empty file,
'Instruction "train" corresponds to no data!' for a header-only CSV) or not at all: pyarrow
takes Latin-1 bytes into a string column, and the UnicodeDecodeError comes later, as a traceback,
when the rows are read. These checks read the file the way a person would and name the line, the
byte offset and what to do. The cheap ones run before every load (`check_file`: one pass over the
bytes, like the sha256 the tokenization cache takes); the line-by-line JSON scan only once a load
has failed (`diagnose`).
"""
from __future__ import annotations

import json
from pathlib import Path

from runner.errors import Problem
from runner.plan.evaluation import directory_problem

CHUNK = 1 << 20
SHOWN_CHARS = 80  # of a bad line, in a message
JSON_FIX = ("a .jsonl file holds one JSON object per line; a .json file a list of objects ([{...}, {...}]) or "
            "JSON lines")


def check_file(path: Path, where: str) -> Problem | None:
    """A problem that makes the file unreadable before any parser sees it: a directory, no content, or text that
    is not UTF-8 (the only encoding the loaders read)."""
    if path.is_dir():  # plan checks it first; a folder made since is said the same way
        return directory_problem(path, where)
    if path.suffix == ".parquet":  # binary: only emptiness can be told without a parquet reader
        empty = path.stat().st_size == 0
        return Problem(where, f"{path} is empty (0 bytes)", "write the examples into it") if empty else None
    bad, blank = scan_text(path)
    if bad is not None:
        offset, line, byte = bad
        return Problem(where, f"{path} is not UTF-8 text: byte 0x{byte:02x} at line {line} (byte offset {offset}) "
                              "is not valid UTF-8", _encoding_hint(path))
    if blank:
        return Problem(where, f"{path} is empty (no examples in it)",
                       "write the examples into it: " + (JSON_FIX if path.suffix in (".json", ".jsonl")
                                                         else "a header row, then one example per line"))
    return None


def scan_text(path: Path) -> tuple[tuple[int, int, int] | None, bool]:
    """((byte offset, line, byte) of the first byte that is not UTF-8, or None; whether the file holds only
    whitespace). Read in chunks, so a large file costs memory of one chunk."""
    offset, line, carry, blank = 0, 1, b"", True
    with path.open("rb") as handle:
        while True:
            chunk = handle.read(CHUNK)
            data = carry + chunk
            if not data:
                return None, blank
            try:
                data.decode("utf-8")
                good, carry = data, b""
            except UnicodeDecodeError as exc:
                if chunk and exc.reason == "unexpected end of data":  # a character split between two chunks
                    good, carry = data[:exc.start], data[exc.start:]
                else:
                    return (offset + exc.start, line + data.count(b"\n", 0, exc.start), data[exc.start]), False
            blank = blank and not good.strip()
            offset, line = offset + len(good), line + good.count(b"\n")
            if not chunk:
                return None, blank


def _encoding_hint(path: Path) -> str:
    with path.open("rb") as handle:
        head = handle.read(2)
    source = "UTF-16" if head in (b"\xff\xfe", b"\xfe\xff") else "WINDOWS-1252"  # UTF-16 starts with its BOM
    guess = "it starts like UTF-16" if source == "UTF-16" else "Latin-1/Windows-1252 is the usual culprit"
    return (f"re-encode it as UTF-8 ({guess}), e.g. iconv -f {source} -t UTF-8 {path.name} > utf8-{path.name}, "
            "and point the recipe at the new file")


TABLE_FIX = ("each line needs as many cells as the header row, and every opening quote a closing one; quote a cell "
             "that holds the separator or a line break (\"a, b\")")


def diagnose(path: Path, where: str, cause: str) -> Problem | None:
    """Why `datasets` could not read a file that passed check_file (`cause`: what its parser said), when a person
    can say it better; it answers a file without rows with 'Instruction "train" corresponds to no data!'."""
    if path.suffix in (".csv", ".tsv"):
        if not _data_lines(path):
            return no_rows(path, where)
        return Problem(where, f"cannot read {path}: {cause}", TABLE_FIX)  # pandas names the line ("in line 3")
    if path.suffix not in (".json", ".jsonl"):
        return None
    message = json_problem(path)
    if message is not None:
        return Problem(where, message, JSON_FIX)
    if _first_character(path) == "[" and not json.loads(path.read_text(encoding="utf-8-sig")):
        return no_rows(path, where)
    return one_object(path, 1, where)  # a pretty-printed single object fails to load as JSON lines


def _data_lines(path: Path) -> bool:
    """Whether a table has a non-blank line after its header."""
    with path.open(encoding="utf-8-sig") as handle:
        lines = (line for line in handle if line.strip())
        next(lines, None)
        return next(lines, None) is not None


def json_problem(path: Path) -> str | None:
    """The first line that is not JSON: a file that starts a list is parsed as one document, anything else
    (after a whole-file parse, for .json) as JSON lines."""
    first = _first_character(path)
    if first == "[" or path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8-sig"))
            return None
        except json.JSONDecodeError as exc:
            if first == "[":
                return f"{path} is not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                return (f"line {number} of {path} is not one JSON object ({exc.msg} at column {exc.colno}): "
                        f"{_shown(line)}")
            if not isinstance(value, dict):
                return f"line {number} of {path} is a JSON {type(value).__name__}, not an object: {_shown(line)}"
    return None


def one_object(path: Path, rows: int, where: str) -> Problem | None:
    """A .json file holding one JSON object reads as one example, silently: a list or JSON lines was meant (or the
    list sits under one key, as some exports write it)."""
    if path.suffix != ".json" or rows != 1 or _first_character(path) != "{":
        return None
    fix = f"{JSON_FIX}; to train on one example, put it on one line of a .jsonl file"
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError:  # JSON lines: one line, one example
        value = None
    lists = [key for key, item in value.items() if isinstance(item, list)] if isinstance(value, dict) else []
    if len(lists) == 1 and len(value) == 1:
        return Problem(where, f"{path} holds one JSON object whose '{lists[0]}' holds the examples "
                              f"({len(value[lists[0]])} of them): it reads as a single example",
                       f"write the list itself as the file ([{{...}}, {{...}}]), or one example per line in a .jsonl "
                       "file")
    return Problem(where, f"{path} holds one JSON object, which reads as a single example", fix)


def _first_character(path: Path) -> str:
    with path.open(encoding="utf-8-sig") as handle:
        return handle.read(CHUNK).lstrip()[:1]


def no_rows(path: Path, where: str) -> Problem:
    """A file that holds no examples, said for its kind."""
    if path.suffix in (".csv", ".tsv"):
        return Problem(where, f"{path} holds a header row but no examples below it",
                       "add one example per line under the header row")
    fix = "write the examples into it" + (f": {JSON_FIX}" if path.suffix in (".json", ".jsonl") else "")
    return Problem(where, f"no examples in {path}", fix)


def _shown(line: str) -> str:
    line = line.strip()
    return repr(line[:SHOWN_CHARS] + ("..." if len(line) > SHOWN_CHARS else ""))
