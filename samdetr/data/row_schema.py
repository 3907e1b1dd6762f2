"""The Arrow schema of a shard row and building tables of exactly that schema.

See :mod:`samdetr.data.coco_rows` for what each column holds; only plain Arrow types are used so any
Arrow / Parquet tool reads the shards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["ROW_COLUMNS", "ROW_SCHEMA", "rows_to_table"]


def _list_of(value_type: pa.DataType) -> pa.DataType:
    # "element" is the child name Parquet uses, so a table read back equals ROW_SCHEMA exactly.
    return pa.list_(pa.field("element", value_type))


#: The Arrow schema of a row table (plain Arrow types only; no extension types).
ROW_SCHEMA: pa.Schema = pa.schema([
    ("image_id", pa.int64()), ("file_name", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()),
    ("image", pa.binary()), ("exif_transpose", pa.bool_()), ("mode", pa.string()),
    ("boxes", _list_of(_list_of(pa.float32()))), ("category_ids", _list_of(pa.int32())),
    ("iscrowd", _list_of(pa.int8())), ("area", _list_of(pa.float32())),
    ("annotation_ids", _list_of(pa.int64())),
])  # fmt: skip
ROW_COLUMNS: tuple[str, ...] = tuple(ROW_SCHEMA.names)


def _list_array(values: list[Any], dtype: np.dtype, list_type: pa.DataType, what: str) -> pa.Array:
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum([len(v) for v in values], out=offsets[1:])
    try:
        flat = [np.asarray(v, dtype=dtype).reshape(-1) for v in values]
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError(f"column {what!r}: bad values ({exc})") from exc
    flat_np = np.concatenate(flat) if flat else np.zeros(0, dtype=dtype)
    return pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(flat_np, type=list_type.value_type), type=list_type
    )


def rows_to_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Build a table with exactly :data:`ROW_SCHEMA` from row dicts (an empty list is fine).

    ``boxes`` of a row may be a list of [x, y, w, h] or an (N, 4) array; the per-box lists
    must have equal lengths. Missing or extra keys raise ValueError.
    """
    if isinstance(rows, (str, bytes, Mapping)):
        raise TypeError("rows_to_table expects a sequence of row dicts")
    rows = list(rows)
    expected = set(ROW_COLUMNS)
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"row {i} is a {type(row).__name__}, not a dict")
        keys = set(row)
        if keys != expected:
            raise ValueError(
                f"row {i} (image_id={row.get('image_id')!r}): missing keys "
                f"{sorted(expected - keys)}, unexpected keys {sorted(keys - expected)}"
            )
        n = len(row["category_ids"])
        try:
            box_arr = np.asarray(row["boxes"], dtype=np.float32)
        except (ValueError, TypeError):
            box_arr = None
        box_ok = box_arr is not None and (box_arr.shape == (n, 4) or box_arr.size == n == 0)
        if not box_ok or any(len(row[k]) != n for k in ("iscrowd", "area", "annotation_ids")):
            raise ValueError(
                f"row {i} (image_id={row['image_id']!r}): boxes must be {n} x 4 and "
                "category_ids/iscrowd/area/annotation_ids of equal length"
            )
    col = {name: [row[name] for row in rows] for name in ROW_COLUMNS}
    box_counts = np.fromiter((len(v) for v in col["category_ids"]), np.int64, count=len(rows))
    flat_boxes = [np.asarray(b, dtype=np.float32).reshape(-1) for b in col["boxes"]]
    box_values = np.concatenate(flat_boxes) if flat_boxes else np.zeros(0, np.float32)
    inner_type = ROW_SCHEMA.field("boxes").type.value_type
    inner = pa.ListArray.from_arrays(
        pa.array(np.arange(0, box_values.size + 1, 4, dtype=np.int32)),
        pa.array(box_values, type=pa.float32()),
        type=inner_type,
    )
    outer_offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(box_counts, out=outer_offsets[1:])
    arrays: list[pa.Array] = []
    for name in ROW_COLUMNS:
        typ = ROW_SCHEMA.field(name).type
        if name == "boxes":
            arr = pa.ListArray.from_arrays(pa.array(outer_offsets), inner, type=typ)
        elif pa.types.is_list(typ):
            arr = _list_array(col[name], typ.value_type.to_pandas_dtype(), typ, name)
        else:
            try:
                arr = pa.array(col[name], type=typ)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
                raise ValueError(f"column {name!r}: {exc}") from exc
        if arr.null_count:
            raise ValueError(f"column {name!r} has {arr.null_count} null value(s)")
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=ROW_SCHEMA)
