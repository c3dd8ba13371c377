"""Destroyed keys leave the cache here and are announced for every other process:
keys/cache.py scopes, on a real key store (tests/keys/test_store.py fixtures). The vault
side (NOTIFY between real nodes) is in tests/system/test_multinode.py."""

from __future__ import annotations

import pytest

from keys.cache import KeyCache, decode_scope, encode_scope
from tests.keys.test_store import backend, pg_schema, root, store, tenant  # noqa: F401 - fixtures


def test_scopes_name_what_they_drop():
    cache = KeyCache(ttl=60, size=100)
    for key in (("kek", "t1", 1), ("kek", "t1", 2), ("dek", "t1", "p1", "d1"), ("obj", "t1", "p1", "o1", "k1"),
                ("obj", "t1", "p1", "o2", "k2"), ("dek", "t1", "p2", "d2"), ("obj", "t1", "p2", "o3", "k3"),
                ("idx", "t1")):
        cache.put(key, b"k" * 32)
    assert cache.evict_scope(("object", "t1", "p1", "o1")) == 1
    assert cache.evict_scope(("patient", "t1", "p1")) == 2  # its DEK and remaining object key
    assert cache.evict_scope(("kek", "t1", "1")) == 1
    assert cache.kinds() == {"kek": 1, "dek": 1, "obj": 1, "idx": 1}
    assert cache.scope_evictions == 4
    assert cache.evict_scope(("all",)) == 4 and len(cache) == 0
    assert decode_scope(encode_scope(("patient", "t1", "p1"))) == ("patient", "t1", "p1")
    for bad in (("patient", "t1"), ("nothing",), ("object", "a:b", "p", "o")):
        with pytest.raises(ValueError):
            encode_scope(bad)
    with pytest.raises(ValueError):
        decode_scope("kek:t1")


async def test_destructions_are_announced(store, tenant):
    announced: list[tuple[str, ...]] = []

    async def announce(scope: tuple[str, ...]) -> None:
        announced.append(scope)

    store._cache.announce = announce
    await store.create_patient_key(tenant, "p1")
    await store.new_object_key(tenant, "p1", "o1")
    await store.object_key(tenant, "p1", "o1")
    assert store._cache.kinds().get("dek") == 1
    await store.destroy_object(tenant, "p1", "o1")
    await store.destroy_patient(tenant, "p1")
    assert announced == [("object", tenant, "p1", "o1"), ("patient", tenant, "p1")]
    assert "dek" not in store._cache.kinds() and "obj" not in store._cache.kinds()


async def test_a_failed_announcement_does_not_undo_the_destruction(store, tenant):
    async def unreachable(scope: tuple[str, ...]) -> None:
        raise ConnectionError("database gone")

    store._cache.announce = unreachable
    await store.create_patient_key(tenant, "p2")
    assert await store.destroy_patient(tenant, "p2") != []
    assert await store.destroy_patient(tenant, "p2") == []  # it is gone
