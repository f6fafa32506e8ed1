"""Storage adapters chosen by URL: results DB, object store, cache."""

from keeneye.store.cache import Cache, open_cache
from keeneye.store.db import ResultsDB, open_results_db
from keeneye.store.objects import ObjectInfo, ObjectStore, open_object_store

__all__ = [
    "Cache",
    "ObjectInfo",
    "ObjectStore",
    "ResultsDB",
    "open_cache",
    "open_object_store",
    "open_results_db",
]
