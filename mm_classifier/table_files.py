"""Reading a collection's files: CSV, TSV, JSON Lines and JSON tables a chunk of rows at a time (malformed lines
counted, never fatal), finding their photo, caption and label columns, and the folder their photos are in."""

from __future__ import annotations

import csv
import itertools
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pyarrow as pa
import pyarrow.json as pa_json

from .errors import MMClassifierError
from .photo_rows import BATCH_ROWS, label_list, text_list

if TYPE_CHECKING:
    from .sources import DataSource

IMAGE_COLUMNS = ("image", "file_name")
CAPTION_COLUMNS = ("text", "caption", "captions")
LABEL_COLUMNS = ("labels",)
CAPTION_TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None}


def one_file(files: list[Path], what: str) -> Path:
    if len(files) > 1:
        raise MMClassifierError(f"Found several {what}: {', '.join(map(str, files))}. Pass the one to use as "
                                "--dataset FILE.")
    return files[0]


def json_table(file: Path) -> pa.Table:
    """A JSON file (one object, pretty-printed or not) parsed by Arrow into columns, not a Python object a record."""
    options = pa_json.ReadOptions(block_size=max(file.stat().st_size + 1, 1 << 20))
    try:
        parse = pa_json.ParseOptions(newlines_in_values=True)  # pretty-printed files too
        return pa_json.read_json(file, read_options=options, parse_options=parse)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise MMClassifierError(f"{file} is not a JSON file that can be read: {err}") from None


def json_records(table: pa.Table, key: str, file: Path) -> pa.StructArray:
    """The records of the list under top-level ``key``."""
    kind = table.schema.field(key).type if key in table.column_names else None
    if kind is None or not pa.types.is_list(kind) or not pa.types.is_struct(kind.value_type):
        raise MMClassifierError(f"{file} has no list of records under {key!r}.")
    return table.column(key).combine_chunks().flatten()


def struct_fields(records: pa.StructArray, required: Sequence[str], file: Path) -> dict[str, pa.Array]:
    fields = {records.type.field(i).name: column for i, column in enumerate(records.flatten())}
    missing = [name for name in required if name not in fields]
    if missing:
        raise MMClassifierError(f"{file}: the records have no {', '.join(missing)} (they have {sorted(fields)}).")
    return fields


def find_photos(roots: Sequence[Path], places: Sequence[pa.Array], file: Path) -> tuple[Path, pa.Array]:
    """The first folder (and way of naming photos) under which some of the first photos exist."""
    for root in roots:
        for paths in places:
            if any(p and (root / p).is_file() for p in paths.slice(0, 50).to_pylist()):
                return root, paths
    first = places[0][0].as_py() if len(places[0]) else None
    raise MMClassifierError(f"No photo of {file.name} found (the first is {first!r}): looked in "
                            f"{', '.join(map(str, roots))}. Pass the photo folder with --image-dir.")


def read_table_file(file: Path, source: DataSource, skipped: Counter) -> pa.Table:
    """A CSV/TSV or JSON Lines table -> columns ``image`` (path), ``captions`` and ``labels`` (when it has them),
    built a chunk of rows at a time; malformed lines are counted in ``skipped``."""
    delimiter = CAPTION_TABLE_SUFFIXES.get(file.suffix.lower(), ",")
    records = json_lines(file, skipped) if file.suffix.lower() == ".jsonl" else csv_records(file, delimiter, skipped)
    first = next(records, None)
    if first is None:
        raise MMClassifierError(f"{file} has no rows.")
    columns = caption_columns(list(first), source, str(file))
    schema = pa.schema([("image", pa.string()), ("captions", pa.list_(pa.string()))]
                       + ([("labels", pa.list_(pa.string()))] if columns.labels else []))
    batches = []
    for chunk in chunks(itertools.chain([first], records), BATCH_ROWS):
        data = {"image": [text_or_none(r.get(columns.image)) for r in chunk],
                "captions": [text_list(r.get(columns.captions)) for r in chunk]}
        if columns.labels:
            data["labels"] = [label_list(r.get(columns.labels)) for r in chunk]
        batches.append(pa.RecordBatch.from_pydict(data, schema=schema))
    return pa.Table.from_batches(batches, schema=schema)


def chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def csv_records(file: Path, delimiter: str, skipped: Counter) -> Iterator[dict]:
    with open(file, encoding="utf-8", errors="replace", newline="") as f:
        for row in csv.DictReader(f, delimiter=delimiter):
            if None in row or None in row.values():  # more fields than the header, or fewer
                skipped["malformed line"] += 1
                continue
            yield row


def json_lines(file: Path, skipped: Counter) -> Iterator[dict]:
    with open(file, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                skipped["malformed line"] += 1
                continue
            yield record


class Columns(NamedTuple):
    image: str
    captions: str
    labels: str | None


def caption_columns(names: Sequence[str], source: DataSource, where: str, image: str | None = None) -> Columns:
    """The photo, caption and label columns: those the options name, else the first default the data has."""

    def pick(option: str | None, defaults: Sequence[str], flag: str) -> str | None:
        if option and option not in names:
            raise MMClassifierError(f"{where} has no column {option!r} ({flag}); its columns are {list(names)}.")
        return option or next((name for name in defaults if name in names), None)

    image = image or pick(source.image_column, IMAGE_COLUMNS, "--image-column")
    captions = pick(source.caption_column, CAPTION_COLUMNS, "--caption-column")
    labels = pick(source.label_column, LABEL_COLUMNS, "--label-column")
    for found, defaults, flag in ((image, IMAGE_COLUMNS, "--image-column"), (captions, CAPTION_COLUMNS,
                                                                            "--caption-column")):
        if found is None:
            raise MMClassifierError(f"{where} has columns {list(names)}, none of them {' or '.join(defaults)}; name "
                                    f"the right one with {flag}.")
    return Columns(image, captions, labels)


def text_or_none(value) -> str | None:
    return None if value is None or value == "" else str(value)
