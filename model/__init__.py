"""fraudstream's shared core: schemas, feature definitions, scorer, registry, stores.

Everything here is imported by ``api``, ``stream`` and ``training``; it imports none of them.
"""
