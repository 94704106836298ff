"""The PostgreSQL gallery store on a real server (Debian's postgresql package, started here in a temp dir):
replicas that follow one store through its change log and NOTIFY, removals that propagate, a change log
without gaps under concurrent writers, all-or-nothing enrolment under kill -9, and the store's own CRUD."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

psycopg = pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")

from edgeface_cli.errors import DataError  # noqa: E402
from edgeface_cli.serve.matching import GalleryIndex  # noqa: E402
from edgeface_cli.serve.store import ConflictError, NewSample, NotFoundError, StoreModelError  # noqa: E402
from edgeface_cli.serve.store.postgres import PostgresStore  # noqa: E402
from edgeface_cli.serve.store.sqlite import SQLiteStore  # noqa: E402
from edgeface_cli.thresholds import ModelFingerprint  # noqa: E402

BINARIES = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
FOLLOW_WITHIN_S = 1.0


def _as_server_user() -> list[str]:
    """initdb and postgres refuse to run as root: run them as the postgres user then."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser") is None or subprocess.run(["id", "-u", "postgres"], capture_output=True).returncode:
        pytest.skip("running as root, and there is no postgres user (or no runuser) to start PostgreSQL as")
    return ["runuser", "-u", "postgres", "--"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A PostgreSQL cluster of its own on 127.0.0.1 (free port, socket in its temp dir); its admin URL."""
    if not BINARIES:
        pytest.skip("PostgreSQL's server binaries are not installed (/usr/lib/postgresql/*/bin/initdb): "
                    "apt-get install postgresql (.ci/run does)")
    bin_dir = Path(BINARIES[-1]).parent
    runner = _as_server_user()
    folder = Path(tempfile.mkdtemp(prefix="edgeface-pg-"))
    if runner:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", _free_port()
    try:
        subprocess.run([*runner, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "edgeface",
                        "-E", "UTF8", "--no-sync", "--no-instructions"], check=True, capture_output=True, timeout=120)
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c max_connections=40"
        subprocess.run([*runner, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w",
                        "-t", "60", "-o", options, "start"], check=True, capture_output=True, timeout=90)
        yield f"postgresql://edgeface@127.0.0.1:{port}"
    finally:
        subprocess.run([*runner, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def database(server: str, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database per test: its URL."""
    name = "t_" + request.node.name.removeprefix("test_")[:40]
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


def unit(rng: np.random.Generator, n: int, dim: int = 512) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def samples(vectors: np.ndarray) -> list[NewSample]:
    return [NewSample(vector, f"{number:064x}") for number, vector in enumerate(vectors)]


class Follower:
    """A replica's follower: its in-memory index (the service's GalleryIndex), woken by NOTIFY."""

    def __init__(self, store: PostgresStore) -> None:
        self.index = GalleryIndex(store, kind="exact")
        self.store, self.wakeups = store, 0
        store.wait_for_change(timeout=0)  # LISTENing before the test's first commit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.store.wait_for_change(timeout=5.0):  # long: only a NOTIFY can make this follower fast
                self.wakeups += 1
            self.index.refresh()

    def ids(self, collection: str) -> set[int]:
        with self.index._lock:
            found = self.index._collections.get(collection)
            return set(found.person_of) if found else set()

    def stop(self) -> None:
        self._stop.set()
        self.store._query("SELECT pg_notify('edgeface_changes', '')")  # wakes the waiting thread to see the flag
        self._thread.join(timeout=10)


def within(seconds: float, condition: Callable[[], bool]) -> float | None:
    """How long ``condition`` took to hold, polled every 10 ms for at most ``seconds``; None when it never did."""
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        if condition():
            return time.perf_counter() - started
        time.sleep(0.01)
    return None


@pytest.fixture
def replicas(database: str) -> Iterator[tuple[PostgresStore, PostgresStore, Follower]]:
    """Two stores on one database (two replicas, A and B) and B's follower."""
    first, second = PostgresStore(database), PostgresStore(database)
    first.create_collection("staff")
    follower = Follower(second)
    yield first, second, follower
    follower.stop()
    first.close()
    second.close()


def test_an_enrolment_on_one_replica_reaches_the_others_index_within_a_second(replicas) -> None:
    first, second, follower = replicas
    rng = np.random.default_rng(0)
    vectors = unit(rng, 3)
    added = first.enrol("staff", "ana", samples(vectors))
    took = within(FOLLOW_WITHIN_S, lambda: follower.ids("staff") == {sample.id for sample in added})
    assert took is not None, f"B's index holds {follower.ids('staff')} a second after A enrolled"
    assert follower.wakeups >= 1  # woken by the commit's NOTIFY, not by the 5 s timeout
    [[best]] = follower.index.search("staff", vectors[1:2], 1)
    assert best.person == "ana" and best.sample_id == added[1].id and best.score == pytest.approx(1.0, abs=1e-5)

    assert first.wait_for_change(timeout=0.2) is False  # nothing new: it waits out its timeout


def test_removals_on_either_replica_propagate(replicas) -> None:
    first, second, follower = replicas
    rng = np.random.default_rng(1)
    ana = first.enrol("staff", "ana", samples(unit(rng, 2)))
    bo = first.enrol("staff", "bo", samples(unit(rng, 2)))
    assert within(FOLLOW_WITHIN_S, lambda: len(follower.ids("staff")) == 4)

    second.delete_sample("staff", "ana", ana[0].id)
    assert within(FOLLOW_WITHIN_S, lambda: follower.ids("staff") == {ana[1].id, bo[0].id, bo[1].id})
    assert first.delete_person("staff", "bo") == 2
    assert within(FOLLOW_WITHIN_S, lambda: follower.ids("staff") == {ana[1].id})
    assert first.delete_collection("staff") == 1
    assert within(FOLLOW_WITHIN_S, lambda: follower.ids("staff") == set())
    with pytest.raises(NotFoundError):
        second.persons("staff")


def test_concurrent_writers_on_two_replicas_leave_no_gap_a_follower_misses(replicas) -> None:
    """Sequence numbers are handed out in request order and transactions commit in another; without the
    change-log lock a follower reading meanwhile skips a change that commits late, and never sees it."""
    first, second, follower = replicas
    errors: list[BaseException] = []

    def writer(store: PostgresStore, name: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for number in range(15):
                store.enrol("staff", f"{name}{number}", samples(unit(rng, 3)))
        except BaseException as error:  # noqa: BLE001 (reported by the test)
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(store, name, seed))
               for store, name, seed in ((first, "a", 2), (second, "b", 3), (first, "c", 4))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    stored = set(first.vectors("staff")[0].tolist())
    assert len(stored) == 3 * 15 * 3
    assert within(2.0, lambda: follower.ids("staff") == stored), f"missed {stored - follower.ids('staff')}"
    seqs = [change.seq for change in first.changes_since(0)]
    assert seqs == sorted(seqs) and len(seqs) == len(stored)


ENROL_FOREVER = textwrap.dedent("""
    import sys
    import numpy as np
    from edgeface_cli.serve.store import NewSample
    from edgeface_cli.serve.store.postgres import PostgresStore
    store = PostgresStore(sys.argv[1])
    rng = np.random.default_rng(0)
    for number in range(10_000):
        vectors = rng.standard_normal((200, 512)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.enrol("staff", f"p{number}", [NewSample(vector, "0" * 64) for vector in vectors])
""")


@pytest.mark.slow
def test_a_kill_minus_9_mid_enrolment_leaves_each_person_wholly_enrolled_or_absent(database: str) -> None:
    with PostgresStore(database) as store:
        store.create_collection("staff")
        child = subprocess.Popen([sys.executable, "-c", ENROL_FOREVER, database])
        try:
            in_transaction = "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() " \
                             "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL AND query LIKE 'INSERT%%'"
            # Kill it once it has committed one person and is inside the transaction of another
            assert within(60, lambda: store.sample_count() >= 200 and store._query(in_transaction)[0][0] > 0)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        gone = "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        assert within(10, lambda: store._query(gone)[0][0] == 0)  # the server rolled the open transaction back
        counts = {person.name: person.samples for person in store.persons("staff")}
        assert counts and set(counts.values()) == {200}, counts
        assert len(store.changes_since(0, limit=1_000_000)) == store.sample_count() == 200 * len(counts)


def test_collections_persons_samples_keys_and_the_model_binding(database: str) -> None:
    """The store's own answers, beside the SQLite store's on the same calls (one interface, two stores)."""
    from edgeface_cli.serve.keys import check_key, create_key

    rng = np.random.default_rng(5)
    vectors = unit(rng, 3)
    fingerprint = ModelFingerprint.of(Path("/models/m.pt"), "a" * 64, 112, "rgb/127.5-1 center_crop", False)
    with tempfile.TemporaryDirectory() as folder, PostgresStore(database) as store, \
            SQLiteStore(Path(folder) / "g.db") as reference:
        for each in (store, reference):
            each.bind(fingerprint, "the store")
            each.create_collection("staff")
            each.enrol("staff", "ana", [NewSample(vector, f"{n:064x}", {"blur_variance": 50.0}, (1.0, 2.0, 3.0, 4.0),
                                                  ("blurred",)) for n, vector in enumerate(vectors)])
            each.enrol("staff", "bo", samples(vectors[:1]))
        with pytest.raises(ConflictError):
            store.create_collection("staff")
        with pytest.raises(NotFoundError, match="no collection 'nobody'"):
            store.enrol("nobody", "x", samples(vectors[:1]))
        with pytest.raises(NotFoundError, match="no person 'cy'"):
            store.person("staff", "cy")
        with pytest.raises(DataError):
            store.enrol("staff", "ana", samples(np.zeros((1, 7), np.float32)))
        assert store.fingerprint() == fingerprint
        assert [(p.name, p.samples) for p in store.persons("staff")] == \
            [(p.name, p.samples) for p in reference.persons("staff")] == [("ana", 3), ("bo", 1)]
        assert (store.collection("staff").persons, store.collection("staff").samples) == (2, 4)
        ours, theirs = store.samples("staff", "ana"), reference.samples("staff", "ana")
        assert [(s.quality, s.face_box, s.flags, s.source_sha256) for s in ours] == \
            [(s.quality, s.face_box, s.flags, s.source_sha256) for s in theirs]
        assert np.array_equal(np.stack([s.embedding for s in ours]), vectors)
        assert ours[0].created_at.endswith("+00:00")
        ids, matrix, persons = store.vectors("staff")
        assert persons == ["ana"] * 3 + ["bo"] and np.array_equal(matrix[:3], vectors)

        created = create_key(store, "reader", ["read"])
        assert check_key(store, created.token) is not None
        store.revoke_key(created.stored.key_id)
        assert store.key(created.stored.key_id).revoked_at is not None
        assert [key.name for key in store.keys()] == ["reader"]
        with pytest.raises(NotFoundError):
            store.revoke_key("nope")

    other = ModelFingerprint.of(Path("/models/other.pt"), "b" * 64, 112, "rgb/127.5-1 center_crop", False)
    with PostgresStore(database) as replica:
        with pytest.raises(StoreModelError, match="enrolled with"):
            replica.bind(other, database)  # a replica started with another model is refused
        with pytest.raises(StoreModelError, match="by another replica"):
            replica._write_fingerprint(other)  # two binding an empty store at once: bind saw none, the other won
        assert replica.fingerprint() == fingerprint


def test_an_unreachable_server_is_one_line_naming_the_fix_without_the_password() -> None:
    url = f"postgresql://edgeface:s3cret@127.0.0.1:{_free_port()}/gallery"
    with pytest.raises(DataError) as refused:
        PostgresStore(url, connect_timeout_s=2)
    message = str(refused.value)
    assert "cannot reach the PostgreSQL store at postgresql://127.0.0.1:" in message and "/gallery" in message
    assert "s3cret" not in message and "\n" not in message and "--store" in message
