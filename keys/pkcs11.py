"""PKCS#11 root keys (an HSM, a smart card, SoftHSM2): one AES-256 key object per epoch.

    pkcs11:token=vault;object=vault-root-?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/vault/hsm.pin

The URL is an RFC 7512 PKCS#11 URI. ``object=`` is an exact label in RFC 7512, and we
use it as a prefix: the key object of root-key version ``v`` is labelled exactly
``<object><v>``, so destroying one epoch (``C_DestroyObject``) can never touch another.
Wrapping is ``CKM_AES_GCM`` inside the token with the canonical wrap context as the
associated data; the key objects are created sensitive and non-extractable, so their
bytes never leave the token.

Threads. python-pkcs11 calls ``C_Initialize(NULL)``, which by the standard promises the
module that no two threads call it at once. So every call runs on this provider's own
single-thread executor (never the event loop's default pool), and one session suffices.
Fork. A PKCS#11 session must not be used in a forked child: each call checks the pid,
and a child re-initialises the module and opens its own session and executor.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from keys.errors import IntegrityError, KeyDestroyed, KeyExists, KeysError, ProviderError
from keys.providers import check_version_id, context_aad

log = logging.getLogger(__name__)

T = TypeVar("T")

_FORMAT_V1 = b"\x01"
_IV_BYTES = 12  # 96-bit random IV: an epoch key wraps a few thousand keys, far below 2**32
_TAG_BITS = 128
_KEY_BITS = 256
_PATH_ATTRS = frozenset({"token", "object", "type"})
_QUERY_ATTRS = frozenset({"module-path", "pin-source"})


@dataclass(frozen=True)
class Pkcs11Url:
    token: str
    prefix: str
    module_path: str
    pin_file: Path = field(repr=False)

    @classmethod
    def parse(cls, url: str) -> Pkcs11Url:
        """Parse ``pkcs11:token=..;object=..?module-path=..&pin-source=file:..`` (RFC 7512)."""
        if not url.startswith("pkcs11:"):
            raise ProviderError("a PKCS#11 root key URL starts with pkcs11:")
        path, _, query = url[len("pkcs11:") :].partition("?")
        attrs = _attributes(path, ";", _PATH_ATTRS, "path")
        params = _attributes(query, "&", _QUERY_ATTRS, "query")
        if attrs.get("type", "secret-key") != "secret-key":
            raise ProviderError("pkcs11 URL: type must be secret-key")
        missing = [n for n, v in (("token", attrs.get("token")), ("object", attrs.get("object")),
                                  ("module-path", params.get("module-path")),
                                  ("pin-source", params.get("pin-source"))) if not v]
        if missing:
            raise ProviderError(f"pkcs11 URL lacks {', '.join(missing)}")
        module = params["module-path"]
        if not os.path.isabs(module):
            raise ProviderError("pkcs11 URL: module-path must be an absolute path")
        source = params["pin-source"]
        pin_path = unquote(urlsplit(source).path) if source.startswith("file:") else source
        if not os.path.isabs(pin_path):
            raise ProviderError("pkcs11 URL: pin-source must be file:/absolute/path")
        return cls(token=attrs["token"], prefix=attrs["object"], module_path=module, pin_file=Path(pin_path))


def _attributes(text: str, sep: str, known: frozenset[str], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, text.split(sep)):
        name, eq, value = part.partition("=")
        if name == "pin-value":
            # A PIN inside the URL ends up in environment dumps and process listings.
            raise ProviderError("pkcs11 URL: pin-value is refused; use pin-source=file:/path")
        if not eq or name not in known or name in out:
            raise ProviderError(f"pkcs11 URL: unsupported or repeated {where} attribute {name!r}")
        out[name] = unquote(value)
    return out


def _read_pin(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ProviderError(f"cannot read the PKCS#11 PIN file {path}: {exc.strerror}") from None
    try:
        if os.fstat(fd).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ProviderError(f"PKCS#11 PIN file {path} must not be accessible to group or others (chmod 600)")
        raw = os.read(fd, 4096)
    finally:
        os.close(fd)
    pin = raw.decode("utf-8", "strict").rstrip("\r\n")
    if not pin:
        raise ProviderError(f"PKCS#11 PIN file {path} is empty")
    return pin


class Pkcs11RootKey:
    """Root-key versions as AES-256 key objects in a PKCS#11 token."""

    name = "pkcs11"

    def __init__(self, url: Pkcs11Url) -> None:
        self.url = url
        self._pid = os.getpid()
        self._executor = self._new_executor()
        self._session: Any = None  # only touched on the executor thread
        self._session_pid = 0
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, production: bool = True) -> Pkcs11RootKey:
        # Accepted in production: the key never leaves the token.
        parsed = Pkcs11Url.parse(url)
        if not Path(parsed.module_path).is_file():
            raise ProviderError(f"PKCS#11 module {parsed.module_path} does not exist")
        return cls(parsed)

    def label(self, version_id: str) -> str:
        return self.url.prefix + check_version_id(version_id)

    # -- the provider contract ---------------------------------------------------------

    async def create_version(self, version_id: str) -> None:
        """A new AES-256 key object labelled ``prefix + version_id``; refused if it exists."""
        label = self.label(version_id)
        await self._run("create", lambda s: _create_key(s, label))

    async def wrap(self, version_id: str, plaintext: bytes, context: Mapping[str, str]) -> bytes:
        label, aad = self.label(version_id), context_aad(context)
        iv = secrets.token_bytes(_IV_BYTES)
        sealed = await self._run("wrap", lambda s: _gcm(s, label, "encrypt", iv, aad, bytes(plaintext)))
        return _FORMAT_V1 + iv + sealed

    async def unwrap(self, version_id: str, blob: bytes, context: Mapping[str, str]) -> bytes:
        label, aad = self.label(version_id), context_aad(context)
        if len(blob) < 1 + _IV_BYTES + _TAG_BITS // 8 or blob[:1] != _FORMAT_V1:
            raise IntegrityError("wrapped key has an unknown format")
        iv, body = bytes(blob[1 : 1 + _IV_BYTES]), bytes(blob[1 + _IV_BYTES :])
        return await self._run("unwrap", lambda s: _gcm(s, label, "decrypt", iv, aad, body))

    async def destroy_version(self, version_id: str) -> datetime:
        """``C_DestroyObject`` of the version's key object; idempotent. Returns now (UTC)."""
        label = self.label(version_id)
        await self._run("destroy", lambda s: _destroy_key(s, label))
        return datetime.now(UTC)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if os.getpid() == self._pid:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close_session)
        self._executor.shutdown(wait=False)

    # -- plumbing ----------------------------------------------------------------------

    @staticmethod
    def _new_executor() -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="vault-pkcs11")

    async def _run(self, operation: str, fn: Callable[[Any], T]) -> T:
        if self._closed:
            raise ProviderError("the PKCS#11 root key provider is closed")
        if os.getpid() != self._pid:
            # A forked child: the parent's executor thread does not exist here and its
            # session must not be used; start over (the session is re-opened below).
            self._pid, self._executor = os.getpid(), self._new_executor()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, operation, fn)

    def _call(self, operation: str, fn: Callable[[Any], T]) -> T:
        import pkcs11.exceptions as p11

        try:
            return fn(self._open_session())
        except KeysError:
            raise  # ours (KeyExists, KeyDestroyed, ...) pass through unchanged
        except (p11.EncryptedDataInvalid, p11.EncryptedDataLenRange, p11.GeneralError,
                p11.DataInvalid, p11.FunctionFailed) as exc:
            if operation == "unwrap":
                # The key object was found; the token refused this ciphertext for this
                # context. SoftHSM2 reports a bad GCM tag as CKR_GENERAL_ERROR.
                raise IntegrityError("wrapped key failed authentication for this context") from None
            raise ProviderError(f"PKCS#11 {operation} failed: {type(exc).__name__}") from None
        except (p11.SessionHandleInvalid, p11.SessionClosed, p11.DeviceRemoved, p11.TokenNotPresent,
                p11.UserNotLoggedIn) as exc:
            self._session = None  # re-open on the next call
            raise ProviderError(f"PKCS#11 {operation} failed: {type(exc).__name__}") from None
        except p11.PKCS11Error as exc:
            raise ProviderError(f"PKCS#11 {operation} failed: {type(exc).__name__}") from None

    def _open_session(self) -> Any:
        if self._session is not None and self._session_pid == os.getpid():
            return self._session
        import pkcs11

        lib = pkcs11.lib(self.url.module_path)
        if self._session_pid and self._session_pid != os.getpid():
            # The child of a fork must call C_Initialize again before anything else.
            lib.reinitialize()
        self._session = None
        try:
            token = lib.get_token(token_label=self.url.token)
        except (pkcs11.NoSuchToken, pkcs11.MultipleTokensReturned) as exc:
            raise ProviderError(f"PKCS#11 token {self.url.token!r}: {type(exc).__name__}") from None
        pin = _read_pin(self.url.pin_file)
        try:
            session = token.open(user_pin=pin, rw=True)
        except pkcs11.UserAlreadyLoggedIn:
            # Login state is per application: another provider on this module logged in.
            session = token.open(rw=True)
        except (pkcs11.PinIncorrect, pkcs11.PinLocked, pkcs11.PinExpired) as exc:
            raise ProviderError(f"PKCS#11 login refused: {type(exc).__name__}") from None
        finally:
            del pin
        self._session, self._session_pid = session, os.getpid()
        return session

    def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None and self._session_pid == os.getpid():
            try:
                session.close()
            except Exception as exc:  # closing is best effort; the token may be gone
                log.warning("closing the PKCS#11 session failed: %s", type(exc).__name__)


def _find(session: Any, label: str) -> Any | None:
    import pkcs11
    from pkcs11 import KeyType, ObjectClass

    try:
        return session.get_key(object_class=ObjectClass.SECRET_KEY, key_type=KeyType.AES, label=label)
    except pkcs11.NoSuchKey:
        return None
    except pkcs11.MultipleObjectsReturned:
        raise ProviderError("PKCS#11 token holds several key objects with one version's label") from None


def _create_key(session: Any, label: str) -> None:
    from pkcs11 import Attribute, KeyType, MechanismFlag

    if _find(session, label) is not None:
        raise KeyExists("a root-key version with this id already exists in the token")
    session.generate_key(
        KeyType.AES,
        _KEY_BITS,
        label=label,
        store=True,
        capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
        template={
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.WRAP: False,
            Attribute.UNWRAP: False,
            Attribute.SIGN: False,
            Attribute.VERIFY: False,
            Attribute.DERIVE: False,
        },
    )


def _destroy_key(session: Any, label: str) -> None:
    key = _find(session, label)
    if key is not None:
        key.destroy()


def _gcm(session: Any, label: str, direction: str, iv: bytes, aad: bytes, data: bytes) -> bytes:
    from pkcs11 import Mechanism
    from pkcs11.mechanisms import GCMParams

    # Looked up by label on every call, never cached: a version destroyed by another
    # node (or process) must stop working here at once.
    key = _find(session, label)
    if key is None:
        raise KeyDestroyed("root-key version does not exist in the token (destroyed or never created)")
    params = GCMParams(iv, aad, _TAG_BITS)
    op = key.encrypt if direction == "encrypt" else key.decrypt
    return bytes(op(data, mechanism=Mechanism.AES_GCM, mechanism_param=params))
