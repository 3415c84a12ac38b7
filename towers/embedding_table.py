"""``item_embeddings.parquet``: the item embedding table a run wrote (``domain, item_id,
embedding``), rows in catalogue order (row 1 first). The vectors are one fixed-size list column
written from and read into one contiguous array, never one Python object per item (a catalogue of
1M items reads and writes in about a second)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from crossrec import schema

FILE = "item_embeddings.parquet"


def write_item_embeddings(path: str | Path, items: pd.DataFrame, embeddings: np.ndarray) -> None:
    """``embeddings`` [n, e] of ``items``' n rows (their domain and item_id) to ``path``."""
    vectors = np.ascontiguousarray(embeddings, np.float32)
    if len(vectors) != len(items):
        raise ValueError(f"{len(vectors)} embeddings for {len(items)} items")
    flat = pa.array(vectors.reshape(-1))
    pq.write_table(pa.table({schema.DOMAIN: pa.array(items[schema.DOMAIN].astype(str).to_numpy()),
                             schema.ITEM_ID: pa.array(items[schema.ITEM_ID].astype(str).to_numpy()),
                             "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])}), path)


def read_item_embeddings(path: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """(the items' domain and item_id, their embeddings [n, e] float32) from ``path`` (also a
    table written as a variable-size list column, as crossrec wrote it before)."""
    table = pq.read_table(path)
    keys = table.select([schema.DOMAIN, schema.ITEM_ID]).to_pandas()
    column = table.column("embedding").combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return keys, values.reshape(len(table), -1) if len(table) else values.reshape(0, 0)
