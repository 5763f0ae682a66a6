"""An in-memory matrix of per-image rows (hashes or embeddings), kept in step with the database.

Searches over every image (Hamming distance, cosine similarity) are one numpy expression over a contiguous
array; this class keeps that array current without rebuilding it: a new row goes at the end (capacity
doubles, so adding is amortised O(row)), a removed row is replaced by the last one (O(row)), and an owner
is a small integer per row so that "this user's images only" is a mask over the scores, never a copy of
the matrix. Not thread-safe: the gallery index calls it under its lock.
"""
from __future__ import annotations

import numpy as np


class RowMatrix:
    def __init__(self, width: int, dtype: np.dtype | type, capacity: int = 1024):
        self.width = width
        self._ids = np.empty(capacity, np.int64)
        self._owners = np.empty(capacity, np.int32)
        self._data = np.empty((capacity, width), dtype)
        self._size = 0
        self._position: dict[int, int] = {}
        self._owner_codes: dict[str | None, int] = {}

    def __len__(self) -> int:
        return self._size

    def __contains__(self, row_id: int) -> bool:
        return row_id in self._position

    def _owner_code(self, owner: str | None) -> int:
        return self._owner_codes.setdefault(owner, len(self._owner_codes))

    def put(self, row_id: int, values: np.ndarray, owner: str | None) -> None:
        """Add or replace the row of `row_id`."""
        at = self._position.get(row_id)
        if at is None:
            if self._size == len(self._ids):
                self._grow(max(1024, 2 * self._size))
            at = self._size
            self._size += 1
            self._position[row_id] = at
            self._ids[at] = row_id
        self._data[at] = values
        self._owners[at] = self._owner_code(owner)

    def put_many(self, row_ids: np.ndarray, values: np.ndarray, owners: list[str | None]) -> None:
        """Bulk load (rows not yet present), as when the cache is filled from the database."""
        count = len(row_ids)
        if self._size + count > len(self._ids):
            self._grow(max(1024, self._size + count))
        start, end = self._size, self._size + count
        self._ids[start:end] = row_ids
        self._data[start:end] = values
        self._owners[start:end] = [self._owner_code(o) for o in owners]
        self._position.update(zip(row_ids.tolist(), range(start, end)))
        self._size = end

    def set_owner(self, row_id: int, owner: str | None) -> None:
        at = self._position.get(row_id)
        if at is not None:
            self._owners[at] = self._owner_code(owner)

    def remove(self, row_id: int) -> None:
        at = self._position.pop(row_id, None)
        if at is None:
            return
        last = self._size - 1
        if at != last:
            moved = int(self._ids[last])
            self._ids[at], self._owners[at], self._data[at] = self._ids[last], self._owners[last], self._data[last]
            self._position[moved] = at
        self._size = last

    def _grow(self, capacity: int) -> None:
        ids, owners, data = self._ids, self._owners, self._data
        self._ids = np.empty(capacity, np.int64)
        self._owners = np.empty(capacity, np.int32)
        self._data = np.empty((capacity, self.width), data.dtype)
        n = self._size
        self._ids[:n], self._owners[:n], self._data[:n] = ids[:n], owners[:n], data[:n]

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, data) of the rows now held: views, valid until the next change."""
        return self._ids[:self._size], self._data[:self._size]

    def owner_mask(self, owner: str | None) -> np.ndarray | None:
        """Which rows belong to `owner`; None when `owner` is None (everyone's rows)."""
        if owner is None:
            return None
        code = self._owner_codes.get(owner)
        if code is None:
            return np.zeros(self._size, bool)
        return self._owners[:self._size] == code


def top_k(scores: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """Indices of the k best scores, best first (argpartition: O(n), then a sort of k)."""
    n = len(scores)
    if n == 0 or k <= 0:
        return np.empty(0, np.int64)
    keyed = -scores if largest else scores
    if k < n:
        part = np.argpartition(keyed, k - 1)[:k]
    else:
        part = np.arange(n)
    return part[np.argsort(keyed[part], kind="stable")]
