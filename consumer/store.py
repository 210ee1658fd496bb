"""Where one partition's completed conversations and markers are kept: memory or a SQLite file.

The engine reads and writes them only through `Store`, so it stays pure: unit
tests and a worker without a state directory use `MemoryStore`; the runtime, given
`STATE_DIR`, backs each assigned partition with a `SqliteStore`, rebuilt from the
state topic on assignment and deleted on revoke, like a Kafka Streams state store
behind its changelog. Either way a store counts the bytes it holds (`held`) so the
engine can keep it under its `budget`: the oldest completed conversations become
markers first, then the oldest markers go.
"""

from __future__ import annotations

import heapq
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import msgspec

from consumer.errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Iterator

MEMORY_ROW_BYTES = 280
"""Resident bytes of a `MemoryStore` entry beside its blob and id (dict slot, heap entry,
`Retained`), measured with bench/memory.py."""

SQLITE_ROW_BYTES = 40
"""File bytes of a `SqliteStore` row beside its id (row and index entries), measured."""

SQLITE_BLOB_BYTES = 160
"""File bytes of a blob beside its own length (row header, the page space it leaves), measured."""

SQLITE_PAGE_BYTES = 16384
"""Several consolidated records (2-5 KB) share a page instead of one each with the rest free."""

SQLITE_CACHE_KIB = 4096
"""SQLite's page cache per partition: all the memory a store on disk takes."""


class Retained(msgspec.Struct, frozen=True, gc=False):
    """A completed conversation (`blob` is its consolidated state record) or a marker (no blob).

    `at`: when it completed, or when it became a marker. The counts and offset are
    what refusing a continuation or a late duplicate needs without decoding the blob.
    """

    at: float
    last_offset: int
    acked_count: int
    seq: int
    blob: bytes | None = None

    @property
    def completed(self) -> bool:
        return self.blob is not None


class Store(Protocol):
    """Completed conversations and markers by conversation id, each replaced whole."""

    budget: int | None
    """Bytes it may hold (see `held`); None: no bound."""

    @property
    def held(self) -> int:
        """Bytes held: every blob and id, and a fixed cost per entry."""

    @property
    def marker_held(self) -> int:
        """The part of `held` that markers take."""

    @property
    def completed_count(self) -> int: ...

    @property
    def marker_count(self) -> int: ...

    def get(self, cid: str) -> Retained | None: ...

    def put(self, cid: str, retained: Retained) -> None: ...

    def pop(self, cid: str) -> Retained | None:
        """Removes and returns the entry, if any."""

    def oldest(self, *, completed: bool) -> tuple[str, Retained] | None:
        """The completed conversation (or marker) with the smallest `at`, if any."""

    def items(self) -> Iterator[tuple[str, Retained]]:
        """Every entry, in no particular order (tests and diagnostics)."""

    def close(self) -> None: ...


def _cost(cid: str, retained: Retained, row: int, blob: int = 0) -> int:
    kept = 0 if retained.blob is None else blob + len(retained.blob)
    return row + len(cid.encode()) + kept


class _Counted:
    """The bytes and entries a store holds, kept as entries come and go."""

    def __init__(self) -> None:
        self._zero()

    def _zero(self) -> None:
        self._held = 0
        self._marker_held = 0
        self._completed = 0
        self._markers = 0

    @property
    def held(self) -> int:
        return self._held

    @property
    def marker_held(self) -> int:
        return self._marker_held

    @property
    def completed_count(self) -> int:
        return self._completed

    @property
    def marker_count(self) -> int:
        return self._markers

    def _tally(self, cost: int, retained: Retained, sign: int) -> None:
        """Counts an entry in (`sign` 1) or out (-1); `cost` is its bytes."""
        cost *= sign
        self._held += cost
        if retained.completed:
            self._completed += sign
        else:
            self._markers += sign
            self._marker_held += cost


class MemoryStore(_Counted):
    """A dict, with a heap per kind for the oldest entry (stale heap entries are skipped)."""

    def __init__(self, budget: int | None = None) -> None:
        super().__init__()
        self.budget = budget
        self._rows: dict[str, Retained] = {}
        self._heaps: tuple[list[tuple[float, str]], list[tuple[float, str]]] = ([], [])

    def get(self, cid: str) -> Retained | None:
        return self._rows.get(cid)

    def put(self, cid: str, retained: Retained) -> None:
        self.pop(cid)
        self._rows[cid] = retained
        self._count(cid, retained, 1)
        heapq.heappush(self._heaps[retained.completed], (retained.at, cid))

    def pop(self, cid: str) -> Retained | None:
        old = self._rows.pop(cid, None)
        if old is not None:
            self._count(cid, old, -1)
        return old

    def _count(self, cid: str, retained: Retained, sign: int) -> None:
        self._tally(_cost(cid, retained, MEMORY_ROW_BYTES), retained, sign)

    def oldest(self, *, completed: bool) -> tuple[str, Retained] | None:
        heap = self._heaps[completed]
        while heap:
            at, cid = heap[0]
            row = self._rows.get(cid)
            if row is not None and row.completed == completed and row.at == at:
                return cid, row
            heapq.heappop(heap)
        return None

    def items(self) -> Iterator[tuple[str, Retained]]:
        return iter(list(self._rows.items()))

    def close(self) -> None:
        self._rows.clear()
        self._heaps = ([], [])
        self._zero()


_SCHEMA = """
CREATE TABLE retained (
    cid TEXT PRIMARY KEY,
    completed INTEGER NOT NULL,
    at REAL NOT NULL,
    last_offset INTEGER NOT NULL,
    acked_count INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    blob_id INTEGER
) WITHOUT ROWID;
CREATE INDEX retained_age ON retained (completed, at);
CREATE TABLE blobs (blob BLOB NOT NULL);
"""
"""The bookkeeping in a small table (lookups of ids not there, the common case, touch only
its pages), the blobs apart, by rowid."""

_SELECT = (
    "SELECT r.cid, r.at, r.last_offset, r.acked_count, r.seq, b.blob "
    "FROM retained r LEFT JOIN blobs b ON b.rowid = r.blob_id "
)


class SqliteStore(_Counted):
    """One SQLite file, owned by one engine: made empty on open, deleted on `close`.

    Durability comes from the state topic, not from this file (it is rebuilt from
    the topic on every assignment), so it runs without a journal or fsync.
    """

    def __init__(self, path: Path, budget: int | None = None) -> None:
        super().__init__()
        self.budget = budget
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.executescript(
            f"PRAGMA page_size={SQLITE_PAGE_BYTES}; PRAGMA journal_mode=OFF; "
            f"PRAGMA synchronous=OFF; PRAGMA cache_size=-{SQLITE_CACHE_KIB}; "
            "PRAGMA temp_store=MEMORY;" + _SCHEMA
        )
        self._sql("BEGIN")  # Never committed: nothing reads the file but this connection.

    def _sql(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {type(exc).__name__}: {exc}") from exc

    def get(self, cid: str) -> Retained | None:
        row = self._sql(_SELECT + "WHERE r.cid = ?", (cid,)).fetchone()
        return None if row is None else Retained(*row[1:])

    def put(self, cid: str, retained: Retained) -> None:
        self.pop(cid)
        blob_id = None
        if retained.blob is not None:
            blob_id = self._sql("INSERT INTO blobs VALUES (?)", (retained.blob,)).lastrowid
        self._sql(
            "INSERT INTO retained VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                cid,
                retained.completed,
                retained.at,
                retained.last_offset,
                retained.acked_count,
                retained.seq,
                blob_id,
            ),
        )
        self._count(cid, retained, 1)

    def pop(self, cid: str) -> Retained | None:
        old = self.get(cid)
        if old is not None:
            (blob_id,) = self._sql(
                "DELETE FROM retained WHERE cid = ? RETURNING blob_id", (cid,)
            ).fetchone()
            if blob_id is not None:
                self._sql("DELETE FROM blobs WHERE rowid = ?", (blob_id,))
            self._count(cid, old, -1)
        return old

    def _count(self, cid: str, retained: Retained, sign: int) -> None:
        self._tally(_cost(cid, retained, SQLITE_ROW_BYTES, SQLITE_BLOB_BYTES), retained, sign)

    def oldest(self, *, completed: bool) -> tuple[str, Retained] | None:
        row = self._sql(
            _SELECT + "WHERE r.completed = ? ORDER BY r.at LIMIT 1",
            (int(completed),),
        ).fetchone()
        return None if row is None else (row[0], Retained(*row[1:]))

    def items(self) -> Iterator[tuple[str, Retained]]:
        rows = self._sql(_SELECT).fetchall()
        return iter([(row[0], Retained(*row[1:])) for row in rows])

    def close(self) -> None:
        self._db.close()
        self.path.unlink(missing_ok=True)
