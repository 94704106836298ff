"""`edgeface serve`: the REST recognition service (``serve --model M --store S``), its API keys
(``serve keys create|list|revoke``) and the import of an enroll gallery file (``serve import``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from .common import ConfigOpt, SetOpt, TrustCodeOpt, app, console, err_console, print_json, resolve_config, user_errors

serve_app = typer.Typer(help="Serve recognition over REST (FastAPI on uvicorn), and manage its API keys.",
                        invoke_without_command=True, rich_markup_mode=None)
keys_app = typer.Typer(help="API keys of a store: create (shown once), list, revoke.", no_args_is_help=True,
                       rich_markup_mode=None)
serve_app.add_typer(keys_app, name="keys")
app.add_typer(serve_app, name="serve")

StoreOpt = typer.Option(..., "--store", help="The gallery store: a SQLite file (created when missing) or a "
                                             "postgresql:// URL.")


def _need_serve_extra() -> None:
    from ..errors import import_extra

    for module in ("fastapi", "uvicorn", "python_multipart", "prometheus_client"):
        import_extra(module, "edgeface serve", "serve")


@serve_app.callback()
@user_errors
def serve(
    ctx: typer.Context,
    model: Optional[Path] = typer.Option(None, "--model", help="A run directory, checkpoint or exported file (an "
                                         "exported .onnx runs fastest)."),
    store: Optional[str] = typer.Option(None, "--store", help="The gallery store: a SQLite file (created when "
                                        "missing) or a postgresql:// URL."),
    host: str = typer.Option("127.0.0.1", "--host", help="The address to listen on (default: this machine only)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    quality: Optional[str] = typer.Option(None, "--quality", help="Enrolment quality gate: reject (default), review "
                                          "(store but flag) or off."),
    match: Optional[str] = typer.Option(None, "--match", help="A person's score: best (their best sample, default) "
                                        "or mean (their template)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Decide at this similarity instead of the "
                                              "model's recorded threshold."),
    exact_up_to: Optional[int] = typer.Option(None, "--exact-up-to", min=1, help="Search a collection exactly "
                                              "below this many samples, by the binary index from there (switched "
                                              "in the background as it grows; default 2000)."),
    index: Optional[str] = typer.Option(None, "--index", help="Search index: auto (exact, then binary "
                                        "from --exact-up-to; default), exact, hnsw (a graph, for galleries past a "
                                        "few million), or binary (a Hamming scan of sign codes re-ranked exactly: "
                                        "the fastest measured at 1 M samples)."),
    settings_file: Optional[Path] = typer.Option(None, "--settings", help="A JSON file of service settings."),
    setting: Optional[list[str]] = typer.Option(None, "--setting", metavar="SECTION.KEY=VALUE", help="One service "
                                                "setting, e.g. quality.min_eye_distance_px=30. Repeatable."),
    trust_code: bool = TrustCodeOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Serve /v1/embed, /v1/verify, /v1/identify and the gallery (collections, persons, samples) over REST, with
    API keys; OpenAPI at /docs. Refuses a store enrolled by another model."""
    if ctx.invoked_subcommand is not None:
        return
    from ..errors import ConfigError

    if model is None or store is None:
        raise ConfigError("edgeface serve needs --model (a run, checkpoint or exported file) and --store (a SQLite "
                          "file or postgresql:// URL)")
    _need_serve_extra()
    settings = _settings(settings_file, setting or [], quality, match, threshold, exact_up_to, index)
    import uvicorn

    from ..deploy.embedder import Embedder
    from ..serve.app import create_app
    from ..serve.service import Service

    embedder = Embedder.load(model, resolve_config(config, set_), trust_code=trust_code)
    service = Service.open(model, store, settings, embedder=embedder)
    err_console.print(f"edgeface serve: {embedder.source.name} on {listening_words(host, port)}; store {store} with "
                      f"{service.store.sample_count()} samples; docs at /docs")
    if service.threshold is None:
        err_console.print(f"no threshold applies, so verify and identify give scores without decisions: "
                          f"{service.threshold_reason}")
    if not service.store.keys():
        err_console.print(f"no API key yet: edgeface serve keys create --store {store} --scope admin")
    if settings.matching.index == "auto" and importlib.util.find_spec("faiss") is None:
        err_console.print(f"the ann extra is not installed, so every collection stays on exact search however large "
                          f"it grows (the binary index from {settings.matching.exact_up_to} samples needs "
                          f"pip install 'edgeface-cli[ann]')")
    uvicorn.run(create_app(service), host=host, port=port, log_level="info")


def listening_words(host: str, port: int) -> str:
    """Where the service listens, and who can reach it, as said at start."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return f"http://{host}:{port} (this machine only: pass --host 0.0.0.0 to accept others)"
    return f"http://{host}:{port} (reachable from other machines: keep the API keys secret)"


def _settings(path: Optional[Path], assignments: list[str], quality: Optional[str], match: Optional[str],
              threshold: Optional[float], exact_up_to: Optional[int] = None, index: Optional[str] = None):
    import json

    from pydantic import ValidationError

    from ..errors import ConfigError
    from ..serve.settings import ServeSettings

    try:
        settings = ServeSettings.model_validate(json.loads(path.read_text())) if path else ServeSettings()
        named = [f"quality.mode={quality}"] * (quality is not None) + [f"matching.mode={match}"] * (match is not None)
        named += [f"matching.threshold={threshold}"] * (threshold is not None)
        named += [f"matching.exact_up_to={exact_up_to}"] * (exact_up_to is not None)
        named += [f"matching.index={index}"] * (index is not None)
        return settings.with_overrides(named + assignments)
    except (ValidationError, ValueError, OSError) as error:
        first = error.errors()[0] if isinstance(error, ValidationError) else None
        why = f"{'.'.join(str(part) for part in first['loc'])}: {first['msg']}" if first else str(error)
        raise ConfigError(f"bad service setting ({why}): see edgeface serve --help") from None


@serve_app.command("import")
@user_errors
def import_command(gallery: Path = typer.Argument(..., metavar="GALLERY", help="A gallery file of edgeface enroll."),
                   store: str = StoreOpt,
                   collection: str = typer.Option("default", "--collection", help="The collection it becomes.")) -> None:
    """Bring a gallery file written by edgeface enroll into a store, once (its identities become persons)."""
    from ..serve.store import open_store
    from ..serve.store.gallery_import import import_gallery

    with open_store(store) as opened:
        summary = import_gallery(opened, gallery, collection)
    err_console.print(f"{summary.message} of {store}; serve it with edgeface serve --model <the model that "
                      "enrolled it> --store " + store)


@keys_app.command("create")
@user_errors
def keys_create(store: str = StoreOpt,
                name: str = typer.Option(..., "--name", help="Who or what the key is for."),
                scope: list[str] = typer.Option(["read"], "--scope", help="read, enrol or admin (each includes the "
                                                "ones before it). Repeatable.")) -> None:
    """Create a key; it is printed once and stored only as a hash."""
    from ..serve.keys import create_key
    from ..serve.store import open_store

    with open_store(store) as opened:
        made = create_key(opened, name, scope)
    err_console.print(f"key {made.stored.key_id} ({', '.join(made.stored.scopes)}) for {name}: shown once, keep it")
    typer.echo(made.token)


@keys_app.command("list")
@user_errors
def keys_list(store: str = StoreOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """The store's keys (never their secrets)."""
    from ..serve.store import open_store

    with open_store(store) as opened:
        found = opened.keys()
    if as_json:
        print_json([{"key_id": key.key_id, "name": key.name, "scopes": list(key.scopes), "created_at": key.created_at,
                     "revoked_at": key.revoked_at} for key in found])
        return
    table = Table(box=box.SIMPLE)
    for column in ("id", "name", "scopes", "created", "revoked"):
        table.add_column(column)
    for key in found:
        table.add_row(key.key_id, key.name, ", ".join(key.scopes), key.created_at, key.revoked_at or "")
    console.print(table)


@keys_app.command("revoke")
@user_errors
def keys_revoke(key_id: str = typer.Argument(..., metavar="KEY_ID"), store: str = StoreOpt) -> None:
    """Revoke a key: requests with it are refused (401) from now on."""
    from ..serve.store import open_store

    with open_store(store) as opened:
        revoked = opened.revoke_key(key_id)
    err_console.print(f"revoked key {revoked.key_id} ({revoked.name}) at {revoked.revoked_at}")
