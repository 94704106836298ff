"""The shared gallery store for several replicas: PostgreSQL through psycopg 3 (``--store postgresql://...``).

Each replica keeps its own search index in memory (Debian 12's PostgreSQL 15 has no pgvector, and an index in
the process answers faster than a round trip) and follows the store's change log: ``changes_since`` reads it,
and every transaction that writes it sends ``NOTIFY edgeface_changes`` at commit, so ``wait_for_change`` wakes a
replica's follower as soon as another replica enrols or removes a sample, instead of polling. How the log stays
gap-free across concurrent writers is in ``postgres_schema``.

One connection for the store's statements, shared by the service's threads under a lock (reads are answered by
the in-memory index, so the store sees few queries), and one more, opened on first use, that only LISTENs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ...errors import DataError, import_extra
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
    StoreModelError,
)
from .postgres_schema import CHANGE_LOG_LOCK, CHANNEL, SAMPLE_ROWS, SCHEMA, SCHEMA_LOCK, SCHEMA_VERSION

KEY_COLUMNS = "key_id, name, scopes, secret_hash, created_at, revoked_at"


class PostgresStore(GalleryStore):
    def __init__(self, url: str, dim: int = EMBEDDING_DIM, *, connect_timeout_s: int = 10) -> None:
        self._psycopg = import_extra("psycopg", "a PostgreSQL store (--store postgresql://...)", "postgres")
        self.url, self.dim, self._timeout = url, dim, connect_timeout_s
        self.where = _describe(url, self._psycopg)
        self._lock = threading.RLock()
        self._listen_lock = threading.Lock()
        self._listener: Any = None
        self._db = self._connect()
        with self._transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            db.execute(SCHEMA)
            db.execute("INSERT INTO edgeface_meta (key, value) VALUES ('schema_version', %s) "
                       "ON CONFLICT (key) DO NOTHING", (str(SCHEMA_VERSION),))
        version = self._meta("schema_version")
        if version != str(SCHEMA_VERSION):
            raise DataError(f"{self.where} has store schema {version}, this edgeface reads {SCHEMA_VERSION}: "
                            "use the edgeface that wrote it")

    # ------------------------------------------------------------ plumbing
    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(self.url, autocommit=True, connect_timeout=self._timeout)
        except self._psycopg.OperationalError as error:
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise DataError(f"cannot reach the PostgreSQL store at {self.where} ({reason}): start the server "
                            "or fix --store") from None

    def _connection(self) -> Any:
        """The statement connection; a new one when the last was lost (a server restart, a network cut)."""
        if self._db.closed or self._db.broken:
            self._db = self._connect()
        return self._db

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._lock:
            db = self._connection()
            with db.transaction():
                yield db

    @contextmanager
    def _logged_transaction(self) -> Iterator[Any]:
        """A transaction that writes the change log: serialised behind CHANGE_LOG_LOCK, NOTIFY'd at commit."""
        with self._transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (CHANGE_LOG_LOCK,))
            yield db
            db.execute("SELECT pg_notify(%s, (SELECT COALESCE(MAX(seq), 0) FROM changes)::text)", (CHANNEL,))

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            return self._connection().execute(sql, args).fetchall()

    def _meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM edgeface_meta WHERE key = %s", (key,))
        return rows[0][0] if rows else None

    @staticmethod
    def _collection_id(db: Any, name: str) -> int:
        row = db.execute("SELECT id FROM collections WHERE name = %s", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"no collection {name!r}: create it first (POST /v1/collections)")
        return int(row[0])

    def _person_id(self, db: Any, collection: str, name: str) -> int:
        row = db.execute("SELECT p.id FROM persons p JOIN collections c ON c.id = p.collection_id "
                         "WHERE c.name = %s AND p.name = %s", (collection, name)).fetchone()
        if row is None:
            self._collection_id(db, collection)
            raise NotFoundError(f"no person {name!r} in collection {collection!r}")
        return int(row[0])

    @staticmethod
    def _log_removals(db: Any, where: str, args: Sequence[object]) -> int:
        """Log a removal for every sample the ``where`` clause (over s, p, c) selects; how many."""
        rows = db.execute(SAMPLE_ROWS + where, args).fetchall()
        with db.cursor() as cursor:
            cursor.executemany("INSERT INTO changes (op, sample_id, collection, person) VALUES ('remove', %s, %s, %s)",
                               rows)
        return len(rows)

    # ------------------------------------------------------------ model
    def fingerprint(self) -> ModelFingerprint | None:
        text = self._meta("fingerprint")
        return ModelFingerprint.from_json(json.loads(text)) if text else None

    def _write_fingerprint(self, fingerprint: ModelFingerprint) -> None:
        # Two replicas binding an empty store at once: the first one's model wins, the other is refused
        with self._transaction() as db:
            db.execute("INSERT INTO edgeface_meta (key, value) VALUES ('fingerprint', %s) ON CONFLICT (key) DO NOTHING",
                       (json.dumps(fingerprint.to_json()),))
        bound = self.fingerprint()
        if bound is not None and bound.differences(fingerprint):
            raise StoreModelError(f"{self.where} was bound to {bound.file} by another replica just now; serve "
                                  "that model, or give another --store")

    # ------------------------------------------------------------ collections
    def create_collection(self, name: str) -> Collection:
        try:
            with self._transaction() as db:
                db.execute("INSERT INTO collections (name) VALUES (%s)", (name,))
        except self._psycopg.errors.UniqueViolation:
            raise ConflictError(f"collection {name!r} exists already") from None
        return self.collection(name)

    def _collections(self, name: str | None) -> list[Collection]:
        rows = self._query("SELECT c.name, c.created_at, COUNT(DISTINCT p.id), COUNT(s.id) FROM collections c "
                           "LEFT JOIN persons p ON p.collection_id = c.id LEFT JOIN samples s ON s.person_id = p.id "
                           "WHERE %s::text IS NULL OR c.name = %s GROUP BY c.id ORDER BY c.name", (name, name))
        return [Collection(name, int(persons), int(samples), _iso(created)) for name, created, persons, samples in rows]

    def collections(self) -> list[Collection]:
        return self._collections(None)

    def collection(self, name: str) -> Collection:
        found = self._collections(name)
        if not found:
            raise NotFoundError(f"no collection {name!r}: create it first (POST /v1/collections)")
        return found[0]

    def delete_collection(self, name: str) -> int:
        with self._logged_transaction() as db:
            self._collection_id(db, name)
            removed = self._log_removals(db, "c.name = %s", (name,))
            db.execute("DELETE FROM collections WHERE name = %s", (name,))
        return removed

    # ------------------------------------------------------------ persons and samples
    def enrol(self, collection: str, person: str, samples: Sequence[NewSample]) -> list[Sample]:
        vectors = [self._checked_embedding(sample.embedding) for sample in samples]
        rows = []
        with self._logged_transaction() as db:
            collection_id = self._collection_id(db, collection)
            db.execute("INSERT INTO persons (collection_id, name) VALUES (%s, %s) "
                       "ON CONFLICT (collection_id, name) DO NOTHING", (collection_id, person))
            person_id = self._person_id(db, collection, person)
            for sample, vector in zip(samples, vectors, strict=True):
                rows.append(db.execute(
                    "INSERT INTO samples (person_id, embedding, source_sha256, quality, face_box, flags) "
                    "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id, created_at",
                    (person_id, vector.tobytes(), sample.source_sha256, json.dumps(sample.quality),
                     json.dumps(list(sample.face_box)) if sample.face_box else None,
                     json.dumps(list(sample.flags)))).fetchone())
                db.execute("INSERT INTO changes (op, sample_id, collection, person) VALUES ('add', %s, %s, %s)",
                           (rows[-1][0], collection, person))
        return [Sample(int(sample_id), collection, person, vector, sample.source_sha256, dict(sample.quality),
                       sample.face_box, tuple(sample.flags), _iso(created))
                for (sample_id, created), sample, vector in zip(rows, samples, vectors, strict=True)]

    def persons(self, collection: str) -> list[Person]:
        return self._persons(collection, None)

    def _persons(self, collection: str, name: str | None) -> list[Person]:
        with self._lock:
            self._collection_id(self._connection(), collection)
        rows = self._query("SELECT p.name, p.created_at, COUNT(s.id) FROM persons p JOIN collections c "
                           "ON c.id = p.collection_id LEFT JOIN samples s ON s.person_id = p.id WHERE c.name = %s "
                           "AND (%s::text IS NULL OR p.name = %s) GROUP BY p.id ORDER BY p.name",
                           (collection, name, name))
        return [Person(collection, person, int(count), _iso(created)) for person, created, count in rows]

    def person(self, collection: str, name: str) -> Person:
        found = self._persons(collection, name)
        if not found:
            raise NotFoundError(f"no person {name!r} in collection {collection!r}")
        return found[0]

    def delete_person(self, collection: str, name: str) -> int:
        with self._logged_transaction() as db:
            person_id = self._person_id(db, collection, name)
            removed = self._log_removals(db, "p.id = %s", (person_id,))
            db.execute("DELETE FROM persons WHERE id = %s", (person_id,))
        return removed

    def samples(self, collection: str, person: str) -> list[Sample]:
        with self._lock:
            person_id = self._person_id(self._connection(), collection, person)
        rows = self._query("SELECT id, embedding, source_sha256, quality, face_box, flags, created_at FROM samples "
                           "WHERE person_id = %s ORDER BY id", (person_id,))
        return [Sample(int(sample_id), collection, person, self._vector(blob), sha, dict(quality),
                       tuple(box) if box else None, tuple(flags), _iso(created))
                for sample_id, blob, sha, quality, box, flags, created in rows]

    def delete_sample(self, collection: str, person: str, sample_id: int) -> None:
        with self._logged_transaction() as db:
            person_id = self._person_id(db, collection, person)
            if self._log_removals(db, "s.id = %s AND p.id = %s", (sample_id, person_id)) == 0:
                raise NotFoundError(f"no sample {sample_id} of person {person!r} in collection {collection!r}")
            db.execute("DELETE FROM samples WHERE id = %s", (sample_id,))

    def vectors(self, collection: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        with self._lock:
            self._collection_id(self._connection(), collection)
        rows = self._query("SELECT s.id, s.embedding, p.name FROM samples s JOIN persons p ON p.id = s.person_id "
                           "JOIN collections c ON c.id = p.collection_id WHERE c.name = %s ORDER BY s.id",
                           (collection,))
        ids = np.array([row[0] for row in rows], dtype=np.int64)
        vectors = (np.frombuffer(b"".join(bytes(row[1]) for row in rows), dtype=np.float32).reshape(len(rows), self.dim)
                   if rows else np.zeros((0, self.dim), dtype=np.float32))
        return ids, vectors, [row[2] for row in rows]

    def sample_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM samples")[0][0])

    def _vector(self, blob: bytes) -> np.ndarray:
        return np.frombuffer(bytes(blob), dtype=np.float32).copy()

    # ------------------------------------------------------------ change log
    def last_seq(self) -> int:
        return int(self._query("SELECT COALESCE(MAX(seq), 0) FROM changes")[0][0])

    def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        rows = self._query("SELECT ch.seq, ch.op, ch.sample_id, ch.collection, ch.person, s.embedding FROM changes ch "
                           "LEFT JOIN samples s ON s.id = ch.sample_id AND ch.op = 'add' WHERE ch.seq > %s "
                           "ORDER BY ch.seq LIMIT %s", (seq, limit))
        return [Change(int(number), op, int(sample_id), collection, person,
                       self._vector(blob) if blob is not None else None)
                for number, op, sample_id, collection, person, blob in rows]

    def wait_for_change(self, timeout: float) -> bool:
        """Block until another transaction writes the change log (True) or ``timeout`` seconds pass (False).
        A follower calls this between ``changes_since`` reads: woken at each commit, idle otherwise."""
        with self._listen_lock:
            if self._listener is None or self._listener.closed or self._listener.broken:
                self._listener = self._connect()
                self._listener.execute(f"LISTEN {CHANNEL}")
            woken = False
            try:
                for _ in self._listener.notifies(timeout=timeout, stop_after=1):
                    woken = True
                if woken:  # several commits may have queued notifications: one read of the log answers them all
                    for _ in self._listener.notifies(timeout=0.0):
                        pass
            except self._psycopg.OperationalError:
                self._listener.close()  # reopened on the next call; the caller's changes_since still reads the log
                return True
            return woken

    # ------------------------------------------------------------ keys
    def add_key(self, key: StoredKey) -> None:
        try:
            with self._transaction() as db:
                db.execute(f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
                           (key.key_id, key.name, json.dumps(list(key.scopes)), key.secret_hash, key.created_at,
                            key.revoked_at))
        except self._psycopg.errors.UniqueViolation:
            raise ConflictError(f"an API key with id {key.key_id} exists already") from None

    def key(self, key_id: str) -> StoredKey | None:
        rows = self._query(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = %s", (key_id,))
        return _stored_key(rows[0]) if rows else None

    def keys(self) -> list[StoredKey]:
        return [_stored_key(row) for row in self._query(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at")]

    def revoke_key(self, key_id: str) -> StoredKey:
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        with self._transaction() as db:
            if db.execute("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, %s) WHERE key_id = %s",
                          (now, key_id)).rowcount == 0:
                raise NotFoundError(f"no API key {key_id}: edgeface serve keys list shows them")
        found = self.key(key_id)
        assert found is not None
        return found

    # ------------------------------------------------------------ connection
    def ping(self) -> bool:
        try:
            self._query("SELECT 1")
        except (self._psycopg.Error, DataError):
            return False
        return True

    def close(self) -> None:
        with self._lock, self._listen_lock:
            self._db.close()
            if self._listener is not None:
                self._listener.close()


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _stored_key(row: tuple) -> StoredKey:
    key_id, name, scopes, secret_hash, created, revoked = row
    return StoredKey(key_id, name, tuple(scopes), secret_hash, created, revoked)


def _describe(url: str, psycopg: Any) -> str:
    """The store's host, port and database for messages: never its password."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise DataError("--store is not a valid postgresql:// URL: postgresql://user@host:5432/database") from None
    host = parts.get("host") or "localhost"
    return f"postgresql://{host}:{parts.get('port') or 5432}/{parts.get('dbname') or parts.get('user') or ''}"
