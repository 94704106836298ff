"""The PostgreSQL store's tables, and the two locks that keep replicas from tripping over each other.

The change log's ``seq`` is a bigserial, and a sequence hands out numbers in the order transactions ask, not
the order they commit: a reader could see seq 12 committed while 11 is still in flight, move past it and lose
11 for good. So every transaction that writes the log first takes ``CHANGE_LOG_LOCK`` (a transaction-scoped
advisory lock): writers of the log commit one after another, in seq order, and a replica that has read up to
N has seen every change numbered up to N. Enrolments are rare beside searches; the lock costs nothing that
matters. ``SCHEMA_LOCK`` keeps two replicas starting at once from creating the tables together."""

from __future__ import annotations

SCHEMA_VERSION = 1
CHANNEL = "edgeface_changes"  # NOTIFY'd with the new seq by every transaction that writes the change log
SCHEMA_LOCK = 0x6564676566616301  # advisory lock keys: "edgefac" + 1, + 2 (any bigint no one else uses)
CHANGE_LOG_LOCK = 0x6564676566616302

SCHEMA = """
CREATE TABLE IF NOT EXISTS edgeface_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS collections (
    id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS persons (
    id BIGSERIAL PRIMARY KEY, collection_id BIGINT NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
    name TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), UNIQUE (collection_id, name));
CREATE TABLE IF NOT EXISTS samples (
    id BIGSERIAL PRIMARY KEY, person_id BIGINT NOT NULL REFERENCES persons(id) ON DELETE CASCADE,
    embedding BYTEA NOT NULL, source_sha256 TEXT NOT NULL, quality JSONB NOT NULL, face_box JSONB,
    flags JSONB NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS samples_person ON samples(person_id);
CREATE TABLE IF NOT EXISTS changes (
    seq BIGSERIAL PRIMARY KEY, op TEXT NOT NULL CHECK (op IN ('add', 'remove')), sample_id BIGINT NOT NULL,
    collection TEXT NOT NULL, person TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY, name TEXT NOT NULL, scopes JSONB NOT NULL, secret_hash TEXT NOT NULL,
    created_at TEXT NOT NULL, revoked_at TEXT);
"""

# Every sample of a collection's, person's or single sample's selection, with the names the log records.
SAMPLE_ROWS = ("SELECT s.id, c.name, p.name FROM samples s JOIN persons p ON p.id = s.person_id "
               "JOIN collections c ON c.id = p.collection_id WHERE ")
