"""Process hardening: the server's (not dumpable) and the decoder worker's confinement.

A decoder worker parses hostile files with C libraries. After it has imported them and
loaded its face model it gives up what an exploit could use:

- ``PR_SET_DUMPABLE=0``: no core file, and no same-user process may ptrace it or read
  its ``/proc/PID/mem`` (it holds the plaintext of the item in hand).
- every capability (effective, permitted, inheritable, ambient and the bounding set):
  as root, ``CAP_SYS_PTRACE`` would otherwise still read the server's memory, and
  ``CAP_DAC_OVERRIDE`` any file.
- ``PR_SET_NO_NEW_PRIVS``: no exec can give them back (and Landlock requires it).
- Landlock: reading only below the Python installation, the ``vault`` package and the
  system library folders (code, never data: not ``/proc``, not ``/etc``, not the data
  folder or the key store), writing nowhere; no TCP bind or connect (ABI >= 4), no
  abstract Unix sockets or signals outside the sandbox (ABI >= 6).
- rlimits: address space (the memory bound), no core, no file growth.

Landlock goes through the raw syscalls with ctypes: the Python bindings on PyPI are
pre-releases or young single-maintainer projects, and the kernel ABI is small and stable.
Where the kernel lacks Landlock the worker still runs, reports it, and the server logs a
warning once (docs/media.md).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import resource
import signal
import sys
import sysconfig
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_V3 = 0x20080522
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91}
# Landlock's syscalls have the same numbers on every architecture.
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_READ_FILE, _READ_DIR = 1 << 2, 1 << 3
# Filesystem rights known per ABI version (execute .. make_sym, refer, truncate, ioctl_dev).
_FS_RIGHTS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1
_SYSTEM_LIBS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib")

_libc = ctypes.CDLL(None, use_errno=True)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    return _libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(0), ctypes.c_ulong(0))


def set_not_dumpable() -> bool:
    """The server holds unwrapped keys: no core dump, no same-user ptrace or /proc/PID/mem."""
    if sys.platform != "linux":
        return False
    return _prctl(_PR_SET_DUMPABLE, 0) == 0


def drop_capabilities() -> bool:
    """Empty every capability set; True when the process ends with none."""
    for cap in range(64):
        if _prctl(_PR_CAPBSET_DROP, cap) != 0 and ctypes.get_errno() == errno.EINVAL:
            break  # past the last capability this kernel knows
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    header = (ctypes.c_uint32 * 2)(_CAP_V3, 0)
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable}, all zero
    number = _SYS_CAPSET.get(platform.machine())
    if number is None or _libc.syscall(number, header, data) != 0:
        return False
    return _capabilities_empty()


def _capabilities_empty() -> bool:
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    return all(int(fields.get(name, "0").strip(), 16) == 0 for name in ("CapEff", "CapPrm", "CapInh", "CapAmb"))


def landlock_abi() -> int:
    abi = _libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(0, abi)


def readable_roots() -> list[str]:
    """Code the worker may still need to read (lazy imports, plugins): never data."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sysconfig.get_paths()["purelib"],
             sysconfig.get_paths()["platlib"], str(Path(__file__).resolve().parents[1])}
    roots.update(_SYSTEM_LIBS)
    return sorted(r for r in roots if os.path.isdir(r))


def landlock(read_only: list[str]) -> int:
    """Restrict this process to reading below ``read_only``; returns the ABI used (0: none)."""
    abi = landlock_abi()
    if abi < 1:
        return 0
    fs_rights = _FS_RIGHTS[max(v for v in _FS_RIGHTS if v <= abi)]
    attr = _RulesetAttr(fs_rights, (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
                        (_SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL) if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = _libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for path in read_only:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rights = _READ_FILE | (_READ_DIR if os.path.isdir(path) else 0)
                rule = _PathBeneath(rights, fd)
                if _libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                    raise OSError(ctypes.get_errno(), "landlock_add_rule failed")
            finally:
                os.close(fd)
        if _libc.syscall(_SYS_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return abi


def die_with_parent(parent: int) -> bool:
    """SIGKILL this process when the server that started it ends, however it ends: a
    worker deep in a face search reads no pipe and would otherwise run on alone. A parent
    already gone before the signal was armed (``getppid`` changed) ends the worker now."""
    if _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        return False
    if os.getppid() != parent:
        os._exit(0)
    return True


def confine_worker(*, address_space_bytes: int | None) -> dict[str, Any]:
    """Everything above, in the order that works (capabilities before no_new_privs is
    irrelevant; Landlock last). Returns what took effect, for the server to report."""
    report: dict[str, Any] = {"platform": sys.platform}
    if sys.platform != "linux":
        return report
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # never write a file, even an open one
    if address_space_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (address_space_bytes, address_space_bytes))
    report["dumpable"] = not set_not_dumpable()
    report["capabilities_dropped"] = drop_capabilities()
    report["no_new_privs"] = _prctl(_PR_SET_NO_NEW_PRIVS, 1) == 0
    try:
        report["landlock_abi"] = landlock(readable_roots()) if report["no_new_privs"] else 0
    except OSError as exc:
        report["landlock_abi"] = 0
        report["landlock_error"] = errno.errorcode.get(exc.errno or 0, "EIO")
    return report
