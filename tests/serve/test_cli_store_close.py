"""`identify --store` closes the store on every path: refused before the model loads (nothing enrolled) and
refused after it (a store of another model), not only when it answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeface_cli.serve import local
from edgeface_cli.serve.store import GalleryStore, open_store
from edgeface_cli.thresholds import ModelFingerprint

from ..clirun import invoke


@pytest.fixture
def opened_stores(monkeypatch: pytest.MonkeyPatch) -> list[GalleryStore]:
    """Every store the CLI opens through serve.local, kept to ask afterwards whether it was closed."""
    seen: list[GalleryStore] = []

    def recording(where: str | Path) -> GalleryStore:
        store = open_store(where)
        seen.append(store)
        return store

    monkeypatch.setattr(local, "open_store", recording)
    return seen


def test_a_store_with_nothing_enrolled_is_refused_and_closed(opened_stores: list[GalleryStore],
                                                             tmp_path: Path) -> None:
    probe = tmp_path / "probe.png"
    probe.write_bytes(b"not read: refused first")
    store = str(tmp_path / "empty.db")
    code, output = invoke("identify", str(probe), "--store", store)
    assert code == 2 and "has nothing enrolled" in " ".join(output.split())
    assert len(opened_stores) == 1 and not opened_stores[0].ping()  # closed: a closed connection answers nothing


def test_a_store_of_another_model_is_refused_and_closed(opened_stores: list[GalleryStore], xxs_checkpoint: Path,
                                                        tmp_path: Path) -> None:
    store = tmp_path / "other.db"
    with open_store(store) as made:
        made.bind(ModelFingerprint.of(Path("/models/other.pt"), "e" * 64, 112, "rgb/127.5-1 center_crop", False),
                  str(store))
    probe = tmp_path / "probe.png"
    probe.write_bytes(b"not read: refused first")
    code, output = invoke("identify", str(probe), "--store", str(store), "--checkpoint", str(xxs_checkpoint),
                          "--device", "cpu")
    assert code == 2 and "serve the model that enrolled it" in " ".join(output.split())
    assert len(opened_stores) == 1 and not opened_stores[0].ping()
