"""Who made each output file: recorded when the store writes it, asked when a file is requested.

One small SQLite table under the cache folder (WAL, so several writers are safe), fed by the store's
save hooks for every picture and video any job writes. The access guard uses it so that, with logins
on, a user can fetch their own outputs (an admin anyone's), not another user's by guessing a URL.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from .store import PendingSave, SavedImage


class OwnerIndex:
    def __init__(self, database: Path):
        database.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(database), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS outputs (path TEXT PRIMARY KEY, owner TEXT, saved REAL)")

    def record(self, path: Path, owner: str | None) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO outputs VALUES (?, ?, ?)",
                             (str(path.resolve()), owner, time.time()))

    def owner_of(self, path: Path) -> str | None:
        """The owner recorded for a file; None when none is (a file from before, or another tool)."""
        with self._lock:
            row = self._db.execute("SELECT owner FROM outputs WHERE path = ?", (str(path.resolve()),)).fetchone()
        return row[0] if row else None

    # -- the store's hooks -----------------------------------------------------------------------------
    def before_save(self, pending: PendingSave) -> None:
        return None

    def after_save(self, saved: SavedImage) -> None:
        self.record(saved.path, saved.owner)

    def close(self) -> None:
        with self._lock:
            self._db.close()
