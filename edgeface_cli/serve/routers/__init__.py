"""One router per resource: ``faces`` (embed, verify, identify), ``collections`` (collections, persons,
samples: enrolment through the quality gate), ``health`` (healthz, readyz, metrics).

May import: fastapi and the rest of edgeface_cli.serve (dependencies, schemas, service, store); the deploy
stage for per-face results."""
