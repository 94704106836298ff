"""One router per resource: ``faces`` (embed, verify, identify), ``collections`` (collections, persons,
samples: enrolment through the quality gate), ``health`` (healthz, readyz, metrics)."""
