"""Who keeps a SQLite WAL checkpoint from completing: a test-only diagnostic.

``wal_checkpoint(TRUNCATE)`` answers busy while any connection to the file holds a read
snapshot: an open transaction, or a statement stepped but not yet reset or finalized (a
cursor not exhausted or closed). Python's sqlite3 exposes neither per statement, so this
reads them through the C API (ctypes, on the library the ``_sqlite3`` module is linked
against): every live ``sqlite3.Statement`` (also those of a closed connection kept as a
"zombie" by an unfinalized statement) and every open ``sqlite3.Connection`` found among
the collector's objects, with the objects that refer to it, so a failure names the holder.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sqlite3
import sys
import types
from pathlib import Path
from typing import Any

_lib: Any = None


def _sqlite() -> Any:
    global _lib
    if _lib is None:
        import _sqlite3

        lib = ctypes.CDLL(_sqlite3.__file__)  # dlsym searches its dependencies: libsqlite3
        for name, restype, argtypes in (
            ("sqlite3_stmt_busy", ctypes.c_int, [ctypes.c_void_p]),
            ("sqlite3_sql", ctypes.c_char_p, [ctypes.c_void_p]),
            ("sqlite3_db_handle", ctypes.c_void_p, [ctypes.c_void_p]),
            ("sqlite3_get_autocommit", ctypes.c_int, [ctypes.c_void_p]),
            ("sqlite3_db_filename", ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_char_p]),
        ):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        _lib = lib
    return _lib


# CPython 3.11-3.13: both structs start with PyObject_HEAD followed by the C handle
# (pysqlite_Connection.db, pysqlite_Statement.st).
_HANDLE_OFFSET = object.__basicsize__


def _handle(obj: object) -> int | None:
    return ctypes.c_void_p.from_address(id(obj) + _HANDLE_OFFSET).value


def _filename(lib: Any, db: int) -> str:
    name = lib.sqlite3_db_filename(db, b"main")
    return os.path.realpath(name.decode()) if name else ""


def _describe(obj: object) -> str:
    if isinstance(obj, types.FrameType):
        return f"frame {obj.f_code.co_name} ({obj.f_code.co_filename}:{obj.f_lineno})"
    if isinstance(obj, types.TracebackType):
        frame = obj.tb_frame
        return f"traceback at {frame.f_code.co_name} ({frame.f_code.co_filename}:{obj.tb_lineno})"
    if isinstance(obj, BaseException):
        return f"exception {type(obj).__name__}"
    return type(obj).__module__ + "." + type(obj).__qualname__


def _owners(obj: object, depth: int, seen: set[int]) -> list[str]:
    """Who refers to ``obj``, a few levels up (frames, tracebacks and objects by type)."""
    if depth == 0:
        return []
    lines = []
    here = sys._getframe()
    for ref in gc.get_referrers(obj):
        if id(ref) in seen or ref is here or isinstance(ref, list) and ref and ref[0] is obj and len(ref) > 1000:
            continue
        if isinstance(ref, types.FrameType) and ref.f_code.co_filename == __file__:
            continue
        seen.add(id(ref))
        lines.append(_describe(ref))
        lines.extend("  " + line for line in _owners(ref, depth - 1, seen))
    return lines


def holders(path: str | Path, *, depth: int = 3) -> list[str]:
    """What holds a read snapshot of the SQLite database at ``path``: busy statements
    (with their SQL and owners) and connections inside a transaction. Empty when the
    holder is not a Python sqlite3 object of this process (another process, or none)."""
    lib = _sqlite()
    target = os.path.realpath(path)
    gc.collect(0)
    objects = gc.get_objects()
    statements = [o for o in objects if type(o).__module__ == "sqlite3" and type(o).__name__ == "Statement"]
    connections = [o for o in objects if isinstance(o, sqlite3.Connection)]
    del objects
    found: list[str] = []
    for statement in statements:
        st = _handle(statement)
        if not st or not lib.sqlite3_stmt_busy(st) or _filename(lib, lib.sqlite3_db_handle(st)) != target:
            continue
        sql = (lib.sqlite3_sql(st) or b"").decode(errors="replace")
        found.append(f"active statement {sql!r}, held by:")
        found.extend("  " + line for line in _owners(statement, depth, {id(statements)}))
    for connection in connections:
        db = _handle(connection)
        if db and _filename(lib, db) == target and not lib.sqlite3_get_autocommit(db):
            found.append("connection inside a transaction, held by:")
            found.extend("  " + line for line in _owners(connection, depth, {id(connections)}))
    return found


def checkpoint_blocked(path: str | Path) -> bool:
    """Whether ``wal_checkpoint(TRUNCATE)`` on a fresh connection answers busy now."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=0")
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()
    return bool(busy)
