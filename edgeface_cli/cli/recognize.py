"""`edgeface embed`, `verify`, `enroll` and `identify`: a trained (or exported) model put to use."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .recognize_report import _explain, _print_open_set
from .common import (
    AlignOpt,
    ArchOpt,
    ConfigOpt,
    FacesOpt,
    SetOpt,
    TrustCodeOpt,
    align_flag,
    app,
    console,
    err_console,
    interrupt_says,
    middle_ellipsis,
    print_json,
    resolve_config,
    user_errors,
)

ModelOpt = typer.Option(..., "--checkpoint", help="A run dir, a checkpoint, a bare backbone, or an exported .onnx/.pt2 file.")
FlipOpt = typer.Option(False, "--flip", help="Add the mirrored image's embedding.")
DeviceOpt = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps (exported ONNX/pt2 models run on the CPU).")
BatchOpt = typer.Option(None, "--batch-size", help="Images per batch.")
AllFacesOpt = typer.Option(False, "--all-faces", help="Every face of each photo, one answer per face with its box "
                                                      "(0 the best-scoring; the same crops as align --all-faces).")
StoreOpt = typer.Option(None, "--store", help="The serve store instead of a gallery file: a SQLite path or a "
                                               "postgresql:// URL (edgeface serve's --store).")
CollectionOpt = typer.Option("default", "--collection", help="The store's collection.")
ExplainOpt = typer.Option(False, "--explain", help="Say where the threshold comes from: the data, its pairs, the FAR "
                                                   "asked for and the FAR those pairs can resolve.")


def _embedder(checkpoint: Path, config: Optional[Path], set_: Optional[list[str]], device: Optional[str],
              batch_size: Optional[int], align: Optional[str] = None, arch: Optional[str] = None,
              trust_code: bool = False) -> tuple[Any, Any]:
    from ..deploy.embedder import load_embedder

    resolved = resolve_config(config, set_, **{"runtime.device": device, "data.batch_size": batch_size,
                                               "data.align": align, "model.arch": arch})
    embedder = load_embedder(checkpoint, resolved, trust_code=trust_code)
    ignored = ignored_size_note(set_, resolved.data.image_size, embedder)
    if ignored:
        err_console.print(f"note: {escape(ignored)}", soft_wrap=True)
    return resolved, embedder


def size_set_on_command_line(set_: Optional[list[str]]) -> bool:
    return any(item.replace(" ", "").startswith("data.image_size=") for item in set_ or [])


def ignored_size_note(set_: Optional[list[str]], asked: int, embedder: Any) -> Optional[str]:
    """Why ``--set data.image_size`` does not apply, when the model's run or export fixes the size it is fed at
    (its thresholds and galleries hold at that size only); None when it applies or was not given."""
    used = embedder.settings.image_size
    trained = ((embedder.model.training_config or {}).get("data") or {}).get("image_size")
    if not size_set_on_command_line(set_) or trained is None or asked == used:
        return None
    model = embedder.model
    if model.sidecar and model.sidecar.get("image_size"):
        where = f"its export sidecar {model.source.name}.json says so"
    elif model.runtime in ("onnx", "pt2"):
        where = "the exported graph's fixed input says so"
    elif embedder.run_dir is not None:
        where = f"its run {embedder.run_dir} says so"
    else:
        where = "the training config saved in the checkpoint says so"
    return (f"data.image_size={asked} from --set is ignored: {model.source} was trained at {used} px ({where}), so it "
            f"is fed at {used} px, the size its threshold and galleries hold for; edgeface eval --set "
            f"data.image_size={asked} measures it at another size")


def _embed(embedder: Any, resolved: Any, inputs: list[Path], flip: bool, tree: bool = False,
           photo_faces: Optional[list[Any]] = None) -> Any:
    """Embeddings of ``inputs`` (``tree``: the one folder of identity folders there) with progress, saying
    which files were skipped as unreadable. ``photo_faces``: a list to fill with each photo's faces (``PhotoFaces``),
    one embedding per face (--all-faces)."""
    from ..deploy.embedder import embed_inputs, embed_tree, list_images
    from ..deploy.faces import embed_photo_files, face_embeddings
    from .render import StepProgress

    data = resolved.data
    with StepProgress(err_console) as progress:
        if photo_faces is not None:
            photo_faces += embed_photo_files(embedder, list_images(inputs), flip,
                                             lambda done, total: progress.update("finding faces", done, total))
            embedded = face_embeddings(photo_faces)
        else:
            embedded = (embed_tree(embedder, inputs[0], data.batch_size, data.workers, flip, progress.update) if tree
                        else embed_inputs(embedder, inputs, data.batch_size, data.workers, flip, progress.update))
    for path, why in embedded.unreadable[:10]:
        err_console.print(f"skipped {escape(str(path))}: {escape(why)}", soft_wrap=True)
    if len(embedded.unreadable) > 10:
        err_console.print(f"... and {len(embedded.unreadable) - 10} more files skipped (unreadable or, with --align, no face)")
    for warning in embedded.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    return embedded


def _all_faces_check(all_faces: bool, faces: str, probe_dir: Optional[Path] = None) -> Optional[list[Any]]:
    """A list for ``_embed`` to fill with each photo's faces (--all-faces), else None."""
    from ..errors import DataError

    if all_faces and faces != "best":
        raise DataError(f"--all-faces answers for every face, --faces {faces} picks one: give one of the two")
    if all_faces and probe_dir is not None:
        raise DataError("--all-faces answers per face of PROBE photos; --probe-dir measures labelled probes "
                        "(one face each): run them apart")
    return [] if all_faces else None


@app.command("embed")
@user_errors
def embed(
    inputs: list[Path] = typer.Argument(..., metavar="INPUT", help="Image files, folders of images, or one folder of identity folders."),
    checkpoint: Path = ModelOpt,
    out: Path = typer.Option(..., "--out", help="The .npz to write: embeddings, paths (and labels, identities)."),
    flip: bool = FlipOpt,
    force: bool = typer.Option(False, "--force", help="Overwrite --out."),
    device: Optional[str] = DeviceOpt,
    batch_size: Optional[int] = BatchOpt,
    align: bool = AlignOpt,
    faces: str = FacesOpt,
    all_faces: bool = AllFacesOpt,
    arch: Optional[str] = ArchOpt,
    trust_code: bool = TrustCodeOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """L2-normalised embeddings of images, with their paths (and identities for an identity-folder tree; with
    --all-faces one per face, with face_index and boxes)."""
    from ..preflight import check_model_path, check_output_file

    check_output_file(out, force, inputs=[checkpoint, *inputs])
    check_model_path(checkpoint, trust_code)
    photo_faces = _all_faces_check(all_faces, faces)
    from ..atomic import atomic_write_stream, created_folder_note, missing_folder

    new_folder = missing_folder(out)

    with interrupt_says(f"nothing written ({out} is written only whole, at the end)"):
        resolved, embedder = _embedder(checkpoint, config, set_, device, batch_size, align_flag(align, faces), arch,
                                       trust_code)
        embedded = _embed(embedder, resolved, inputs, flip, photo_faces=photo_faces)
        atomic_write_stream(out, embedded.save)
    for photo in photo_faces or []:
        for result in photo.faces:
            console.print(f"{escape(str(photo.photo))} face {result.index}: {result.face.box_words()} "
                          f"(score {result.face.score:.4f})", soft_wrap=True)
    what = f" of {len(embedded.identities)} identities" if embedded.identities is not None else ""
    console.print(f"wrote {escape(str(out))}: {len(embedded.paths)} embeddings{what}, {embedded.vectors.shape[1]}-d, "
                  f"L2-normalised ({embedder.kind} model {escape(str(embedder.source))})")
    if new_folder is not None:
        console.print(escape(created_folder_note(new_folder) or ""))


@app.command("verify")
@user_errors
def verify(
    first: Path = typer.Argument(..., metavar="IMAGE_A", help="One face image."),
    second: Path = typer.Argument(..., metavar="IMAGE_B", help="The other face image."),
    checkpoint: Path = ModelOpt,
    threshold: Optional[float] = typer.Option(
        None, "--threshold", min=-1.0, max=1.0,
        help="Same identity at or above this similarity (default: the one eval recorded for this model)."),
    flip: bool = FlipOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    explain: bool = ExplainOpt,
    device: Optional[str] = DeviceOpt,
    align: bool = AlignOpt,
    faces: str = FacesOpt,
    arch: Optional[str] = ArchOpt,
    trust_code: bool = TrustCodeOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """1:1 verification: the cosine similarity of two faces, and whether they are the same person."""
    from ..errors import DataError
    from ..preflight import check_model_path, image_file_problem

    for path in (first, second):
        if path.is_dir():
            raise DataError(f"{path} is a folder: verify compares two image files (embed or identify take folders)")
        if not path.is_file():
            raise DataError(f"image not found: {path}")
        problem = image_file_problem(path)
        if problem:  # the message the decoder's check gives, before torch is imported
            raise DataError(f"cannot use {path}: {problem}")
    check_model_path(checkpoint, trust_code)
    resolved, embedder = _embedder(checkpoint, config, set_, device, None, align_flag(align, faces), arch, trust_code)
    result = _verify(embedder, resolved, first, second, threshold, flip)
    if as_json:
        print_json({"first": str(first), "second": str(second), **result.to_json(), "model": str(embedder.source)})
        return
    if result.threshold is None:
        console.print(f"similarity {result.similarity:.4f} (no same/different decision: no threshold applies to "
                      "this model)")
        err_console.print(f"note: {escape(result.threshold_reason)}", soft_wrap=True)
        return
    console.print(f"similarity {result.similarity:.4f} -> {'SAME person' if result.same else 'DIFFERENT people'} "
                  f"(threshold {result.threshold.value:.4f}, from {escape(result.threshold.source)})")
    if explain:
        _explain(result.threshold)


def _verify(embedder: Any, resolved: Any, first: Path, second: Path, threshold: Optional[float], flip: bool) -> Any:
    """Two images compared, saying what is wrong with the inputs (raw photos given unaligned, unreadable)."""
    from ..deploy.decisions import decision_threshold, verify_embeddings
    from ..errors import DataError

    embedded = _embed(embedder, resolved, [first, second], flip)
    if embedded.unreadable:
        path, why = embedded.unreadable[0]
        raise DataError(f"cannot use {path}: {why}")
    vectors = embedded.vectors if len(embedded.vectors) == 2 else embedded.vectors[[0, 0]]  # the same file twice
    return verify_embeddings(vectors[0], vectors[1], decision_threshold(embedder.threshold_sources(flip), threshold))


@app.command("enroll")
@user_errors
def enroll(
    gallery_dir: Optional[Path] = typer.Argument(
        None, metavar="GALLERY_DIR", help="One folder per identity: GALLERY_DIR/<identity>/<image> (not needed with --remove)."),
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", help="The model (required for a new gallery; --add and --remove default to the one "
                                   "that enrolled it)."),
    out: Optional[Path] = typer.Option(None, "--out", help="The gallery file to write (.npz); or --store."),
    store: Optional[str] = StoreOpt,
    collection: str = CollectionOpt,
    add: bool = typer.Option(False, "--add", help="Add GALLERY_DIR's identities to the existing --out gallery."),
    remove: Optional[list[str]] = typer.Option(None, "--remove", help="Remove this identity from --out. Repeatable."),
    flip: bool = FlipOpt,
    force: bool = typer.Option(False, "--force", help="Overwrite --out."),
    device: Optional[str] = DeviceOpt,
    batch_size: Optional[int] = BatchOpt,
    align: bool = AlignOpt,
    faces: str = FacesOpt,
    arch: Optional[str] = ArchOpt,
    trust_code: bool = TrustCodeOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Enroll identities for identify: each identity's mean embedding, plus every image's. --add and --remove
    change an existing gallery, with the model that enrolled it."""
    from ..errors import DataError
    from ..preflight import check_image_folder, check_model_path, check_output_file, identities_removal_problem

    editing = add or bool(remove)
    if (out is None) == (store is None):
        raise DataError("say where to enroll: --out GALLERY.npz or --store STORE (one of the two)")
    if store is not None:
        if editing or gallery_dir is None or checkpoint is None:
            raise DataError("enroll --store adds GALLERY_DIR's identities with --checkpoint MODEL (remove them "
                            "through edgeface serve's API)")
        check_image_folder(gallery_dir, "gallery")
        check_model_path(checkpoint, trust_code)
        return _enroll_store(gallery_dir, checkpoint, store, collection, flip, device, batch_size, align, faces, arch,
                             config, set_, trust_code)
    assert out is not None
    if add and remove:
        raise DataError("--add and --remove: one change at a time")
    if remove and gallery_dir is not None:
        raise DataError("--remove takes no GALLERY_DIR: name the identities to remove with --remove ID")
    if not remove:
        if gallery_dir is None:
            raise DataError("name the folder to enroll: edgeface enroll GALLERY_DIR --checkpoint MODEL --out FILE")
        check_image_folder(gallery_dir, "gallery")
    if editing and not out.is_file():
        raise DataError(f"gallery not found: {out}; --add and --remove change an existing gallery")
    if not editing:
        check_output_file(out, force, inputs=[checkpoint, gallery_dir])
        if checkpoint is None:
            raise DataError("a new gallery needs its model: pass --checkpoint (a run, checkpoint or exported model)")
    if remove:  # an unknown name is answered from the gallery's identity list, before torch is imported
        identities = _gallery_identities(out)
        problem = identities_removal_problem(identities, remove) if identities is not None else None
        if problem:
            raise DataError(problem)
    if checkpoint is not None:
        check_model_path(checkpoint, trust_code)

    kept = f"{out} is unchanged" if editing or out.exists() else f"no gallery written ({out} is written only whole)"
    with interrupt_says(kept):
        _enroll(gallery_dir, checkpoint, out, remove, flip, device, batch_size, align, faces, arch, config, set_, editing,
                trust_code)


def _enroll_store(gallery_dir: Path, checkpoint: Path, where: str, collection: str, flip: bool, device: Optional[str],
                  batch_size: Optional[int], align: bool, faces: str, arch: Optional[str], config: Optional[Path],
                  set_: Optional[list[str]], trust_code: bool) -> None:
    from ..serve.local import bound_flip, enrol_tree, open_for_cli

    with open_for_cli(where, collection).store as store, interrupt_says(f"{where}: each person wholly enrolled or not"):
        flip = bound_flip(store, flip)
        resolved, embedder = _embedder(checkpoint, config, set_, device, batch_size, align_flag(align, faces), arch,
                                       trust_code)
        embedded = _embed(embedder, resolved, [gallery_dir], flip, tree=True)
        persons, samples = enrol_tree(store, where, collection, embedded, embedder.fingerprint(flip))
    console.print(f"enrolled {samples} samples of {persons} identities into {escape(where)} collection "
                  f"{escape(collection)!r} ({escape(str(embedder.source))})")


def _gallery_identities(path: Path) -> Optional[list[str]]:
    """The identities a gallery holds, read with numpy alone; None when the file cannot say (load_gallery then
    names what is wrong with it)."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as arrays:
            return [str(name) for name in arrays["identities"]]
    except Exception:  # noqa: BLE001 - not a zip, no identities array, pickled strings: load_gallery explains
        return None


def _enroll(gallery_dir: Optional[Path], checkpoint: Optional[Path], out: Path, remove: Optional[list[str]], flip: bool,
            device: Optional[str], batch_size: Optional[int], align: bool, faces: str, arch: Optional[str],
            config: Optional[Path], set_: Optional[list[str]], editing: bool, trust_code: bool = False) -> None:
    from ..deploy.decisions import decision_threshold
    from ..deploy.gallery import add_identities, build_gallery, load_gallery, remove_identities, save_gallery

    existing = load_gallery(out) if editing else None
    model = checkpoint or Path(existing.model)  # type: ignore[union-attr]
    flip = existing.flip if existing is not None else flip
    resolved, embedder = _embedder(model, config, set_, device, batch_size, align_flag(align, faces), arch, trust_code)
    fingerprint = embedder.fingerprint(flip)
    if existing is not None:
        existing.check_model(fingerprint, out)
    if remove:
        gallery = remove_identities(existing, remove, fingerprint)  # type: ignore[arg-type]
    else:
        embedded = _embed(embedder, resolved, [gallery_dir], flip, tree=True)  # type: ignore[list-item]
        if existing is not None:
            gallery = add_identities(existing, embedded, fingerprint)
        else:
            found, _ = decision_threshold(embedder.threshold_sources(flip))  # kept with the gallery when eval recorded one
            gallery = build_gallery(embedded, fingerprint, (found.value, found.source) if found else None)
    from ..atomic import created_folder_note, missing_folder

    new_folder = missing_folder(out)
    save_gallery(gallery, out)
    console.print(f"wrote {escape(str(out))}: {len(gallery.identities)} identities, {len(gallery.paths)} images "
                  f"({escape(str(embedder.source))})")
    if new_folder is not None:
        console.print(escape(created_folder_note(new_folder) or ""))


@app.command("identify")
@user_errors
def identify(
    probes: Optional[list[Path]] = typer.Argument(None, metavar="PROBE", help="Probe images or folders of images."),
    gallery_file: Optional[Path] = typer.Option(None, "--gallery", help="A gallery written by edgeface enroll (with "
                                                "--store: imported into the store once, if its collection is new)."),
    store: Optional[str] = StoreOpt,
    collection: str = CollectionOpt,
    match_by: str = typer.Option("best", "--match", help="With --store: a person's best sample, or mean template."),
    probe_dir: Optional[Path] = typer.Option(
        None, "--probe-dir", help="Labelled probes (one folder per identity): report open-set metrics."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="The model (default: the one that enrolled the gallery)."),
    top_k: int = typer.Option(5, "--top-k", min=1, help="Matches shown per probe."),
    threshold: Optional[float] = typer.Option(
        None, "--threshold", min=-1.0, max=1.0,
        help="Below this similarity a probe is unknown (default: the one eval recorded for this model)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    explain: bool = ExplainOpt,
    device: Optional[str] = DeviceOpt,
    batch_size: Optional[int] = BatchOpt,
    align: bool = AlignOpt,
    faces: str = FacesOpt,
    all_faces: bool = AllFacesOpt,
    arch: Optional[str] = ArchOpt,
    trust_code: bool = TrustCodeOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """1:N identification against an enrolled gallery: the best matches, or "unknown" below the threshold."""
    from ..errors import DataError

    photo_faces = _all_faces_check(all_faces, faces, probe_dir)
    if not probes and probe_dir is None:
        raise DataError("name probe images or folders, or pass --probe-dir DIR (one folder per identity)")
    if match_by not in ("best", "mean"):
        raise DataError(f"--match {match_by}: use best (a person's best sample) or mean (their template)")
    if gallery_file is None and store is None:
        raise DataError("say what to search: --gallery GALLERY.npz or --store STORE")
    if gallery_file is not None and not gallery_file.is_file():
        raise DataError(f"gallery not found: {gallery_file}; write one with edgeface enroll GALLERY_DIR --checkpoint "
                        f"MODEL --out {gallery_file}")
    if checkpoint is not None:
        from ..preflight import check_model_path

        check_model_path(checkpoint, trust_code)
    from ..deploy.decisions import decision_threshold
    from ..deploy.gallery import identify as match
    from ..deploy.gallery import load_gallery, open_set_metrics
    from ..data.alignment.photos import NO_FACE
    from ..thresholds import Threshold

    from ..serve.local import bound_flip, bound_model, identify_in_store, open_for_cli

    with ExitStack() as closing:
        gallery = opened = None
        if store is not None:
            if probe_dir is not None:
                raise DataError("--probe-dir measures a gallery file: pass --gallery FILE without --store")
            opened = closing.enter_context(open_for_cli(store, collection, gallery_file))  # closed on every path
            if opened.imported is not None:
                err_console.print(f"{escape(opened.imported.message)} of {escape(store)} from {escape(str(gallery_file))} "
                                  "(once: later calls use the store)", soft_wrap=True)
            flip, model = bound_flip(opened.store, False), checkpoint or bound_model(opened.store)
            if model is None:
                raise DataError(f"{store} has nothing enrolled: edgeface enroll DIR --checkpoint MODEL --store {store}")
        else:
            gallery = load_gallery(gallery_file)  # type: ignore[arg-type]
            flip, model = gallery.flip, checkpoint or Path(gallery.model)
        resolved, embedder = _embedder(model, config, set_, device, batch_size, align_flag(align, faces), arch, trust_code)
        if opened is not None:
            opened.store.bind(embedder.fingerprint(flip), str(store))  # the server's refusal of another model's store
        else:
            gallery.check_model(embedder.fingerprint(flip), gallery_file)  # type: ignore[union-attr, arg-type]
        found, why = decision_threshold(embedder.threshold_sources(flip), threshold)
        if found is None and gallery is not None and gallery.threshold is not None:  # recorded at enroll, for this same model identity
            found, why = Threshold(gallery.threshold[0], f"{gallery.threshold[1]} (kept with the gallery)",
                                   provenance={"given": f"the gallery {gallery_file} (recorded when it was enrolled)"}), ""
        value = found.value if found else None
        report: dict[str, Any] = {"gallery": str(gallery_file) if gallery else None, "model": str(embedder.source), "threshold": value,
                                  "threshold_source": found.source if found else None,
                                  "threshold_provenance": found.provenance if found else None,
                                  "threshold_reason": why or None}
        results, per_face = [], []
        if probes:
            embedded = _embed(embedder, resolved, probes, flip, photo_faces=photo_faces)
            results = (match(gallery, embedded.vectors, embedded.paths, top_k, value) if gallery is not None else
                       identify_in_store(opened.store, collection, embedded.vectors, embedded.paths, top_k, value,  # type: ignore[union-attr]
                                         match_by))
            per_face = [result for photo in photo_faces or [] for result in photo.faces]  # a row of ``results`` each
            report["probes"] = [{"probe": item.probe, "answer": item.answer,
                                 "matches": [{"identity": m.identity, "similarity": m.similarity} for m in item.matches]}
                                | ({"face": per_face[row].index, **per_face[row].face.to_json(),
                                    "eye_distance_px": round(per_face[row].eye_distance_px, 3)} if per_face else {})
                                for row, item in enumerate(results)]
            if photo_faces is not None:
                report["no_face"] = [str(photo.photo) for photo in photo_faces if photo.problem == NO_FACE]
                report["unreadable"] = [{"file": str(photo.photo), "why": photo.problem} for photo in photo_faces
                                        if photo.problem not in (None, NO_FACE)]
        if probe_dir is not None:
            labelled = _embed(embedder, resolved, [probe_dir], flip, tree=True)
            assert labelled.identities is not None and labelled.labels is not None
            names = [labelled.identities[label] for label in labelled.labels]
            report["open_set"] = open_set_metrics(gallery, labelled.vectors, names, value, resolved.eval.far_targets)
        if opened is not None:
            report |= {"store": store, "collection": collection, "match": match_by}
            searched = f"{store} collection {collection!r} ({len(opened.store.persons(collection))} persons, by {match_by})"
        else:
            searched = f"{gallery_file} ({len(gallery.identities)} identities)"  # type: ignore[union-attr]
    if as_json:
        print_json(report)
        return
    if results:
        table = Table(title=f"identify against {escape(searched)}")
        table.add_column("probe", no_wrap=True)
        for column in (["face"] if per_face else []) + ["answer", f"top {top_k} (similarity)"]:
            table.add_column(column, overflow="fold")
        for row, item in enumerate(results):
            answer = (escape(item.answer) if item.answer else "unknown") if found else "no threshold"
            face = [f"{per_face[row].index}: {per_face[row].face.box_words()}"] if per_face else []
            table.add_row(escape(middle_ellipsis(item.probe)), *face, answer,
                          ", ".join(f"{escape(m.identity)} {m.similarity:.3f}" for m in item.matches))
        console.print(table)
    if "open_set" in report:
        _print_open_set(report["open_set"])
    if found is None:
        console.print("no known/unknown decision: no threshold applies to this model (the ranking above still holds)")
        err_console.print(f"note: {escape(why)}", soft_wrap=True)
    elif explain:
        _explain(found)
    else:
        console.print(f"threshold {found.value:.4f}, from {escape(found.source)}")


