"""Serving: ``edgeface serve``, a REST recognition service over a persistent gallery.

``app`` (``create_app``: the FastAPI application and its lifespan), ``routers`` (one per resource: faces,
collections, health), ``dependencies`` (the API key and its scope, the service, decoded photos), ``service``
(the model, store, index and batcher of one running service), ``batching`` (micro-batching of the model),
``matching`` (per-collection indexes following the store's change log; best-sample or mean matching),
``quality`` (the enrolment gate), ``images`` (request bytes -> photo within the limits), ``keys`` (API keys),
``settings`` (``ServeSettings``), ``schemas`` (request and response bodies), ``metrics`` (Prometheus); its
stores (``store``: SQLite by default, PostgreSQL for replicas) and its search indexes (``search``: exact, ANN).

May import: deploy, model, data, evaluation and the top-level modules; nothing from training or cli.
"""
