"""The default gallery store: one SQLite file in WAL mode (readers never wait for the writer; a commit is
durable once it returns, and a process killed mid-transaction leaves the file as it was before it).

One connection, shared by the service's threads under a lock: SQLite serialises writers anyway, and a
recognition service's writes (enrolments) are few beside its reads, which the in-memory index answers."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ...errors import DataError
from ...thresholds import ModelFingerprint
from .base import (
    EMBEDDING_DIM,
    Change,
    Collection,
    ConflictError,
    GalleryStore,
    NewSample,
    NotFoundError,
    Person,
    Sample,
    StoredKey,
)

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS collections (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS persons (
    id INTEGER PRIMARY KEY, collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
    name TEXT NOT NULL, created_at TEXT NOT NULL, UNIQUE (collection_id, name));
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY, person_id INTEGER NOT NULL REFERENCES persons(id) ON DELETE CASCADE,
    embedding BLOB NOT NULL, source_sha256 TEXT NOT NULL, quality TEXT NOT NULL, face_box TEXT,
    flags TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS samples_person ON samples(person_id);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL, sample_id INTEGER NOT NULL,
    collection TEXT NOT NULL, person TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY, name TEXT NOT NULL, scopes TEXT NOT NULL, secret_hash TEXT NOT NULL,
    created_at TEXT NOT NULL, revoked_at TEXT);
"""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class SQLiteStore(GalleryStore):
    def __init__(self, path: Path, dim: int = EMBEDDING_DIM) -> None:
        self.path = Path(path)
        self.dim = dim
        if self.path.is_dir():
            raise DataError(f"--store {self.path} is a folder: give a file (e.g. {self.path / 'gallery.db'})")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a 201 means the sample survives a power cut
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
            version = self._meta("schema_version")
        except sqlite3.DatabaseError as error:
            raise DataError(f"{self.path} is not a gallery store ({error}); give another --store file") from None
        if version is None:
            self._set_meta("schema_version", str(SCHEMA_VERSION))
        elif int(version) != SCHEMA_VERSION:
            raise DataError(f"{self.path} has store schema {version}, this edgeface reads {SCHEMA_VERSION}: "
                            "use the edgeface that wrote it")

    # ------------------------------------------------------------ plumbing
    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def _set_meta(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _collection_id(self, db: sqlite3.Connection, name: str) -> int:
        row = db.execute("SELECT id FROM collections WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"no collection {name!r}: create it first (POST /v1/collections)")
        return int(row[0])

    def _person_id(self, db: sqlite3.Connection, collection: str, name: str) -> int:
        row = db.execute("SELECT p.id FROM persons p JOIN collections c ON c.id = p.collection_id "
                         "WHERE c.name = ? AND p.name = ?", (collection, name)).fetchone()
        if row is None:
            self._collection_id(db, collection)
            raise NotFoundError(f"no person {name!r} in collection {collection!r}")
        return int(row[0])

    def _log_removals(self, db: sqlite3.Connection, where: str, args: Sequence[object]) -> int:
        """Log a removal for every sample the ``where`` clause (over s, p, c) selects; how many."""
        rows = db.execute("SELECT s.id, c.name, p.name FROM samples s JOIN persons p ON p.id = s.person_id "
                          f"JOIN collections c ON c.id = p.collection_id WHERE {where}", args).fetchall()
        db.executemany("INSERT INTO changes (op, sample_id, collection, person) VALUES ('remove', ?, ?, ?)", rows)
        return len(rows)

    # ------------------------------------------------------------ model
    def fingerprint(self) -> ModelFingerprint | None:
        text = self._meta("fingerprint")
        return ModelFingerprint.from_json(json.loads(text)) if text else None

    def _write_fingerprint(self, fingerprint: ModelFingerprint) -> None:
        self._set_meta("fingerprint", json.dumps(fingerprint.to_json()))

    # ------------------------------------------------------------ collections
    def create_collection(self, name: str) -> Collection:
        try:
            with self._transaction() as db:
                db.execute("INSERT INTO collections (name, created_at) VALUES (?, ?)", (name, utc_now()))
        except sqlite3.IntegrityError:
            raise ConflictError(f"collection {name!r} exists already") from None
        return self.collection(name)

    def collections(self) -> list[Collection]:
        rows = self._query("SELECT c.name, c.created_at, COUNT(DISTINCT p.id), COUNT(s.id) FROM collections c "
                           "LEFT JOIN persons p ON p.collection_id = c.id LEFT JOIN samples s ON s.person_id = p.id "
                           "GROUP BY c.id ORDER BY c.name")
        return [Collection(name, persons, samples, created) for name, created, persons, samples in rows]

    def collection(self, name: str) -> Collection:
        rows = self._query("SELECT c.created_at, (SELECT COUNT(*) FROM persons p WHERE p.collection_id = c.id), "
                           "(SELECT COUNT(*) FROM samples s JOIN persons p ON p.id = s.person_id "
                           "WHERE p.collection_id = c.id) FROM collections c WHERE c.name = ?", (name,))
        if not rows:
            raise NotFoundError(f"no collection {name!r}: create it first (POST /v1/collections)")
        created, persons, samples = rows[0]
        return Collection(name, int(persons), int(samples), created)

    def delete_collection(self, name: str) -> int:
        with self._transaction() as db:
            self._collection_id(db, name)
            removed = self._log_removals(db, "c.name = ?", (name,))
            db.execute("DELETE FROM collections WHERE name = ?", (name,))
        return removed

    # ------------------------------------------------------------ persons and samples
    def enrol(self, collection: str, person: str, samples: Sequence[NewSample]) -> list[Sample]:
        vectors = [self._checked_embedding(sample.embedding) for sample in samples]
        now = utc_now()
        ids = []
        with self._transaction() as db:
            collection_id = self._collection_id(db, collection)
            db.execute("INSERT OR IGNORE INTO persons (collection_id, name, created_at) VALUES (?, ?, ?)",
                       (collection_id, person, now))
            person_id = self._person_id(db, collection, person)
            for sample, vector in zip(samples, vectors):
                cursor = db.execute(
                    "INSERT INTO samples (person_id, embedding, source_sha256, quality, face_box, flags, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (person_id, vector.tobytes(), sample.source_sha256, json.dumps(sample.quality),
                     json.dumps(list(sample.face_box)) if sample.face_box else None, json.dumps(list(sample.flags)),
                     now))
                ids.append(int(cursor.lastrowid or 0))
                db.execute("INSERT INTO changes (op, sample_id, collection, person) VALUES ('add', ?, ?, ?)",
                           (ids[-1], collection, person))
        return [Sample(sample_id, collection, person, vector, sample.source_sha256, dict(sample.quality),
                       sample.face_box, tuple(sample.flags), now)
                for sample_id, sample, vector in zip(ids, samples, vectors)]

    def persons(self, collection: str) -> list[Person]:
        with self._lock:
            self._collection_id(self._db, collection)
        rows = self._query("SELECT p.name, p.created_at, COUNT(s.id) FROM persons p JOIN collections c "
                           "ON c.id = p.collection_id LEFT JOIN samples s ON s.person_id = p.id WHERE c.name = ? "
                           "GROUP BY p.id ORDER BY p.name", (collection,))
        return [Person(collection, name, count, created) for name, created, count in rows]

    def person(self, collection: str, name: str) -> Person:
        with self._lock:
            person_id = self._person_id(self._db, collection, name)
        created, count = self._query("SELECT p.created_at, (SELECT COUNT(*) FROM samples WHERE person_id = p.id) "
                                     "FROM persons p WHERE p.id = ?", (person_id,))[0]
        return Person(collection, name, int(count), created)

    def delete_person(self, collection: str, name: str) -> int:
        with self._transaction() as db:
            person_id = self._person_id(db, collection, name)
            removed = self._log_removals(db, "p.id = ?", (person_id,))
            db.execute("DELETE FROM persons WHERE id = ?", (person_id,))
        return removed

    def _sample(self, row: tuple, collection: str, person: str) -> Sample:
        sample_id, blob, sha, quality, box, flags, created = row
        return Sample(int(sample_id), collection, person, np.frombuffer(blob, dtype=np.float32).copy(), sha,
                      json.loads(quality), tuple(json.loads(box)) if box else None, tuple(json.loads(flags)), created)

    def samples(self, collection: str, person: str) -> list[Sample]:
        with self._lock:
            person_id = self._person_id(self._db, collection, person)
        rows = self._query("SELECT id, embedding, source_sha256, quality, face_box, flags, created_at FROM samples "
                           "WHERE person_id = ? ORDER BY id", (person_id,))
        return [self._sample(row, collection, person) for row in rows]

    def delete_sample(self, collection: str, person: str, sample_id: int) -> None:
        with self._transaction() as db:
            person_id = self._person_id(db, collection, person)
            if self._log_removals(db, "s.id = ? AND p.id = ?", (sample_id, person_id)) == 0:
                raise NotFoundError(f"no sample {sample_id} of person {person!r} in collection {collection!r}")
            db.execute("DELETE FROM samples WHERE id = ?", (sample_id,))

    def vectors(self, collection: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        with self._lock:
            self._collection_id(self._db, collection)
        rows = self._query("SELECT s.id, s.embedding, p.name FROM samples s JOIN persons p ON p.id = s.person_id "
                           "JOIN collections c ON c.id = p.collection_id WHERE c.name = ? ORDER BY s.id", (collection,))
        ids = np.array([row[0] for row in rows], dtype=np.int64)
        vectors = (np.frombuffer(b"".join(row[1] for row in rows), dtype=np.float32).reshape(len(rows), self.dim)
                   if rows else np.zeros((0, self.dim), dtype=np.float32))
        return ids, vectors, [row[2] for row in rows]

    def sample_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM samples")[0][0])

    # ------------------------------------------------------------ change log
    def last_seq(self) -> int:
        return int(self._query("SELECT COALESCE(MAX(seq), 0) FROM changes")[0][0])

    def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        rows = self._query("SELECT ch.seq, ch.op, ch.sample_id, ch.collection, ch.person, s.embedding FROM changes ch "
                           "LEFT JOIN samples s ON s.id = ch.sample_id AND ch.op = 'add' WHERE ch.seq > ? "
                           "ORDER BY ch.seq LIMIT ?", (seq, limit))
        return [Change(int(number), op, int(sample_id), collection, person,
                       np.frombuffer(blob, dtype=np.float32).copy() if blob is not None else None)
                for number, op, sample_id, collection, person, blob in rows]

    # ------------------------------------------------------------ keys
    def add_key(self, key: StoredKey) -> None:
        try:
            with self._transaction() as db:
                db.execute("INSERT INTO api_keys (key_id, name, scopes, secret_hash, created_at, revoked_at) "
                           "VALUES (?, ?, ?, ?, ?, ?)", (key.key_id, key.name, json.dumps(list(key.scopes)),
                                                         key.secret_hash, key.created_at, key.revoked_at))
        except sqlite3.IntegrityError:
            raise ConflictError(f"an API key with id {key.key_id} exists already") from None

    def key(self, key_id: str) -> StoredKey | None:
        rows = self._query("SELECT key_id, name, scopes, secret_hash, created_at, revoked_at FROM api_keys "
                           "WHERE key_id = ?", (key_id,))
        return _stored_key(rows[0]) if rows else None

    def keys(self) -> list[StoredKey]:
        rows = self._query("SELECT key_id, name, scopes, secret_hash, created_at, revoked_at FROM api_keys "
                           "ORDER BY created_at")
        return [_stored_key(row) for row in rows]

    def revoke_key(self, key_id: str) -> StoredKey:
        with self._transaction() as db:
            if db.execute("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE key_id = ?",
                          (utc_now(), key_id)).rowcount == 0:
                raise NotFoundError(f"no API key {key_id}: edgeface serve keys list shows them")
        found = self.key(key_id)
        assert found is not None
        return found

    # ------------------------------------------------------------ connection
    def ping(self) -> bool:
        try:
            self._query("SELECT 1")
        except sqlite3.Error:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _stored_key(row: tuple) -> StoredKey:
    key_id, name, scopes, secret_hash, created, revoked = row
    return StoredKey(key_id, name, tuple(json.loads(scopes)), secret_hash, created, revoked)
