"""The SQLite gallery store: collections -> persons -> samples, the change log a replica follows, hashed keys,
the model it is bound to, a gallery file imported once, and all-or-nothing enrolment under kill -9."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgeface_cli.errors import DataError
from edgeface_cli.serve.keys import check_key, create_key
from edgeface_cli.serve.matching import GalleryIndex
from edgeface_cli.serve.store import ConflictError, NewSample, NotFoundError, StoreModelError, open_store
from edgeface_cli.thresholds import ModelFingerprint


def unit(rng: np.random.Generator, n: int, dim: int = 512) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def fingerprint(sha: str = "a" * 64, size: int = 112) -> ModelFingerprint:
    return ModelFingerprint.of(Path("/models/m.pt"), sha, size, "rgb/127.5-1 center_crop", False)


def test_collections_persons_samples_and_change_log(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with open_store(tmp_path / "g.db") as store:
        store.create_collection("staff")
        with pytest.raises(ConflictError):
            store.create_collection("staff")
        with pytest.raises(NotFoundError, match="no collection 'nobody'"):
            store.enrol("nobody", "x", [NewSample(unit(rng, 1)[0], "0" * 64)])
        vectors = unit(rng, 3)
        added = store.enrol("staff", "ana", [NewSample(vector, f"{n:064x}", {"blur_variance": 50.0},
                                                       (1.0, 2.0, 3.0, 4.0)) for n, vector in enumerate(vectors)])
        store.enrol("staff", "bo", [NewSample(unit(rng, 1)[0], "f" * 64, flags=("blurred",))])
        assert [person.name for person in store.persons("staff")] == ["ana", "bo"]
        assert store.person("staff", "ana").samples == 3 and store.collection("staff").samples == 4
        read = store.samples("staff", "ana")
        assert np.array_equal(np.stack([sample.embedding for sample in read]), vectors)
        assert read[0].quality == {"blur_variance": 50.0} and read[0].face_box == (1.0, 2.0, 3.0, 4.0)
        assert store.samples("staff", "bo")[0].flags == ("blurred",)
        ids, matrix, persons = store.vectors("staff")
        assert persons == ["ana"] * 3 + ["bo"] and matrix.shape == (4, 512)

        seq = store.last_seq()
        store.delete_sample("staff", "ana", added[0].id)
        with pytest.raises(NotFoundError):
            store.delete_sample("staff", "bo", added[1].id)  # ana's sample, not bo's
        assert store.delete_person("staff", "bo") == 1
        changes = store.changes_since(seq)
        assert [(change.op, change.person) for change in changes] == [("remove", "ana"), ("remove", "bo")]
        everything = store.changes_since(0)
        assert [change.seq for change in everything] == sorted({change.seq for change in everything})
        added_back = [change for change in everything if change.op == "add" and change.embedding is not None]
        assert {change.sample_id for change in added_back} == {added[1].id, added[2].id}  # removed ones carry none
        assert store.delete_collection("staff") == 2 and store.collections() == []
        assert store.changes_since(store.last_seq()) == []
        assert store.sample_count() == 0


def test_keys_are_stored_hashed_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with open_store(path) as store:
        made = create_key(store, "door", ["enrol"])
        assert check_key(store, made.token) == made.stored and made.stored.scopes == ("enrol",)
        assert check_key(store, made.token[:-1] + ("A" if made.token[-1] != "A" else "B")) is None
        assert check_key(store, "efk_unknown_secret") is None and check_key(store, "garbage") is None
        with pytest.raises(DataError, match="unknown scope root"):
            create_key(store, "x", ["root"])
        store.revoke_key(made.stored.key_id)
        assert check_key(store, made.token) is None
    secret = made.token.split("_", 2)[2].encode()
    assert all(secret not in file.read_bytes() for file in tmp_path.iterdir())  # only its hash is written


def test_a_store_is_bound_to_one_model(tmp_path: Path) -> None:
    with open_store(tmp_path / "g.db") as store:
        store.bind(fingerprint(), "g.db")
        store.bind(fingerprint(), "g.db")  # the same model again: fine
    with open_store(tmp_path / "g.db") as store:
        with pytest.raises(StoreModelError, match=r"other weights .*image size 112 vs 96.*another --store"):
            store.bind(fingerprint("b" * 64, 96), "g.db")


def test_a_file_that_is_not_a_store_is_named(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\xff\xd8 not a database at all" * 100)
    with pytest.raises(DataError, match="photo.jpg is not a gallery store"):
        open_store(path)


def test_import_gallery_once(tmp_path: Path) -> None:
    from edgeface_cli.deploy.embedder import Embeddings
    from edgeface_cli.deploy.gallery import build_gallery, save_gallery
    from edgeface_cli.serve.store.gallery_import import import_gallery

    rng = np.random.default_rng(1)
    embedded = Embeddings(unit(rng, 5), [f"/photos/{n}.jpg" for n in range(5)], np.array([0, 0, 1, 1, 1]), ["ana", "bo"])
    gallery_file = tmp_path / "gallery.npz"
    save_gallery(build_gallery(embedded, fingerprint(), None), gallery_file)
    with open_store(tmp_path / "g.db") as store:
        summary = import_gallery(store, gallery_file)
        assert (summary.persons, summary.samples) == (2, 5) and "5 samples of 2 identities" in summary.message
        assert store.person("default", "bo").samples == 3
        assert np.allclose(store.vectors("default")[1], embedded.vectors)
        with pytest.raises(ConflictError, match="imported before"):
            import_gallery(store, gallery_file)
    with open_store(tmp_path / "other.db") as store:
        store.bind(fingerprint("c" * 64), "other.db")
        with pytest.raises(StoreModelError):
            import_gallery(store, gallery_file)

    from typer.testing import CliRunner

    from edgeface_cli.cli import app

    fresh = str(tmp_path / "cli.db")
    said = CliRunner().invoke(app, ["serve", "import", str(gallery_file), "--store", fresh, "--collection", "staff"])
    assert said.exit_code == 0 and "imported 5 samples of 2 identities into collection 'staff'" in said.output
    again = CliRunner().invoke(app, ["serve", "import", str(gallery_file), "--store", fresh, "--collection", "staff"])
    assert again.exit_code == 2 and "exists already" in again.output


# 600 a person: one enrolment is still long enough for the kill to land inside its transaction, and at most
# 3 persons (1,800 samples) stay under the exact index's 2,000 (an HNSW build calibrating its search width on
# 8,000 vectors took over a minute: a cost of its own, not what this test is about).
PER_PERSON = 600
CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from edgeface_cli.serve.store import NewSample, open_store
    store = open_store(sys.argv[1])
    store.create_collection("c")
    rng = np.random.default_rng(0)
    for person in range(1000):
        vectors = rng.standard_normal((int(sys.argv[2]), 512)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        print(f"enrolling {person}", flush=True)
        store.enrol("c", f"p{person}", [NewSample(vector, f"{n:064x}") for n, vector in enumerate(vectors)])
""")


@pytest.mark.slow
def test_kill_9_mid_enrolment_leaves_each_person_whole_or_absent(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(PER_PERSON)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    for line in child.stdout:
        if line.strip() == "enrolling 2":  # persons 0 and 1 committed; 2 is being written
            break
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    with open_store(path) as store:
        counts = {person.name: person.samples for person in store.persons("c")}
        assert counts.get("p0") == counts.get("p1") == PER_PERSON
        assert set(counts.values()) == {PER_PERSON}  # p2 (and any later) wholly there or absent, never partly
        adds = [change for change in store.changes_since(0) if change.op == "add"]
        assert len(adds) == store.sample_count()  # the log and the samples were committed together
        assert GalleryIndex(store).size() == store.sample_count()  # a restarted service sees all of it


def test_a_second_process_on_the_same_file_follows_the_change_log(tmp_path: Path) -> None:
    """Two services on one SQLite file: what one enrols or removes, the other's index finds after a refresh."""
    rng = np.random.default_rng(2)
    with open_store(tmp_path / "g.db") as writer, open_store(tmp_path / "g.db") as reader:
        writer.create_collection("c")
        follower = GalleryIndex(reader)
        vector = unit(rng, 1)[0]
        sample = writer.enrol("c", "ana", [NewSample(vector, "a" * 64)])[0]
        assert follower.search("c", vector[None], 1) != [[]]  # search refreshes first
        assert follower.search("c", vector[None], 1)[0][0].person == "ana"
        writer.delete_sample("c", "ana", sample.id)
        assert follower.refresh() == 1 and follower.search("c", vector[None], 1) == [[]]
