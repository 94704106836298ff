"""Serving: ``edgeface serve``, a REST recognition service over a persistent gallery (``app``, ``routers``), its
stores (``store``: SQLite by default, PostgreSQL for replicas) and its search indexes (``search``: exact, ANN).

May import: deploy, model, data, evaluation and the top-level modules; nothing from training or cli.
"""
