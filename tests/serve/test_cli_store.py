"""`edgeface enroll --store` / `identify --store`: the CLI on the serve store (SQLite here), best-sample and mean
matching, a gallery file imported once with a message, and a store of another model refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeface_cli.model import EdgeFace
from edgeface_cli.serve.store import open_store
from edgeface_cli.thresholds import file_sha256

from ..clirun import invoke, invoke_json

SMALL = ["--set", "data.image_size=32", "--set", "data.batch_size=8", "--set", "data.workers=0", "--device", "cpu"]


@pytest.fixture(scope="module")
def people(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three identities of the sample dataset, three images each."""
    root = tmp_path_factory.mktemp("people")
    for name in sorted(path.name for path in (sample_dataset / "train").iterdir())[:3]:
        (root / name).mkdir()
        for image in sorted((sample_dataset / "train" / name).iterdir())[:3]:
            shutil.copy(image, root / name / image.name)
    return root


def _probes(people: Path) -> list[Path]:
    return [sorted(folder.iterdir())[1] for folder in sorted(people.iterdir())]  # a copy of an enrolled image each


@pytest.mark.slow  # several model loads through the CLI
def test_enroll_and_identify_on_a_store(people: Path, xxs_checkpoint: Path, tmp_path: Path) -> None:
    store = str(tmp_path / "gallery.db")
    code, output = invoke("enroll", str(people), "--checkpoint", str(xxs_checkpoint), "--store", store, *SMALL)
    assert code == 0, output
    assert "enrolled 9 samples of 3 identities" in output
    with open_store(store) as opened:
        assert {person.name: person.samples for person in opened.persons("default")} == {
            name.name: 3 for name in people.iterdir()}
        ids, vectors, persons = opened.vectors("default")
        probe_vectors = [next(sample.embedding for sample in opened.samples("default", probe.parent.name)
                              if sample.source_sha256 == file_sha256(probe)) for probe in _probes(people)]
    names = sorted(set(persons))
    templates = np.stack([vectors[[p == name for p in persons]].mean(axis=0) for name in names])
    templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    for mode in ("best", "mean"):
        report = invoke_json("identify", *map(str, _probes(people)), "--store", store, "--match", mode,
                             "--threshold", "0.5", *SMALL)
        assert report["match"] == mode and report["store"] == store
        for probe, row, stored in zip(_probes(people), report["probes"], probe_vectors):
            if mode == "best":  # the very image is enrolled: its own sample answers at cosine 1
                assert row["matches"][0]["identity"] == probe.parent.name, row
                assert row["matches"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)
                assert row["answer"] == probe.parent.name
            else:  # each person's mean template (an untrained model: the template need not be the probe's own)
                scores = templates @ stored
                assert [m["identity"] for m in row["matches"]] == [names[i] for i in np.argsort(-scores)]
                assert [m["similarity"] for m in row["matches"]] == pytest.approx(sorted(scores, reverse=True), abs=1e-4)
    # enrolling more adds to the same collection, a person's samples in one transaction
    code, output = invoke("enroll", str(people), "--checkpoint", str(xxs_checkpoint), "--store", store, *SMALL)
    assert code == 0, output
    with open_store(store) as opened:
        assert opened.collection("default").samples == 18


@pytest.mark.slow  # several model loads through the CLI
def test_a_gallery_file_is_imported_once_with_a_message(people: Path, xxs_checkpoint: Path, tmp_path: Path) -> None:
    gallery, store = tmp_path / "old.npz", str(tmp_path / "store.db")
    code, output = invoke("enroll", str(people), "--checkpoint", str(xxs_checkpoint), "--out", str(gallery), *SMALL)
    assert code == 0, output
    alone = invoke_json("identify", *map(str, _probes(people)), "--gallery", str(gallery), *SMALL)  # as before
    assert alone["gallery"] == str(gallery) and "store" not in alone and len(alone["probes"]) == 3
    args = ["identify", *map(str, _probes(people)), "--gallery", str(gallery), "--store", store, *SMALL]
    code, first = invoke(*args)
    assert code == 0, first
    assert "imported 9 samples of 3 identities into collection 'default'" in first
    code, second = invoke(*args)
    assert code == 0, second
    assert "imported" not in second  # the store has the collection now: nothing imported twice
    with open_store(store) as opened:
        assert opened.collection("default").samples == 9
    report = invoke_json(*args)
    assert [row["matches"][0]["identity"] for row in report["probes"]] == [p.parent.name for p in _probes(people)]


@pytest.mark.slow  # several model loads through the CLI
def test_a_store_of_another_model_is_refused_in_one_line(people: Path, xxs_checkpoint: Path, tmp_path: Path) -> None:
    store = str(tmp_path / "bound.db")
    code, output = invoke("enroll", str(people), "--checkpoint", str(xxs_checkpoint), "--store", store, *SMALL)
    assert code == 0, output
    torch.manual_seed(7)
    other = tmp_path / "other.pt"
    torch.save(EdgeFace("edgeface_xxs").state_dict(), other)
    for args in (["enroll", str(people)], ["identify", str(_probes(people)[0]), "--store", store]):
        code, output = invoke(*args, "--checkpoint", str(other), *(["--store", store] if args[0] == "enroll" else []),
                              *SMALL)
        assert code == 2, output
        assert "was enrolled with" in output and "give another --store" in output
        assert "Traceback" not in output
    with open_store(store) as opened:
        assert opened.collection("default").samples == 9  # the refused enroll added nothing


def test_store_options_are_checked_before_any_model_loads(people: Path, tmp_path: Path) -> None:
    code, output = invoke("enroll", str(people), "--out", str(tmp_path / "g.npz"), "--store", str(tmp_path / "s.db"))
    assert code == 2 and "one of the two" in output
    code, output = invoke("identify", str(tmp_path / "x.png"), "--store", str(tmp_path / "s.db"), "--match", "max")
    assert code == 2 and "--match max" in output
