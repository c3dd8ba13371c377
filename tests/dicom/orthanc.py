"""A real Orthanc (Debian's ``orthanc`` with ``orthanc-dicomweb``) for the DICOM export tests.

Orthanc has no bind-address option, so it runs in a network namespace of its own that has
only ``lo`` (``unshare -n``, as /work/shared/bench/peers/run.sh does): nothing outside this
machine — nor anything outside that namespace — can reach it. The test side talks to it
through :class:`NetnsBridge`: a listener on 127.0.0.1 in the test's own namespace whose
every connection is opened by a thread that has joined Orthanc's namespace (``setns``),
so the vault's real client (and its SSRF guard) connects to a loopback port as it would
to any PACS, and bytes are relayed unchanged. Plain http (``VAULT_DICOMWEB_ALLOW_HTTP_LOOPBACK``,
tests only): Debian's Orthanc 1.10.1 completes a TLS handshake, then resets every request.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
PORT = 8042  # inside Orthanc's own namespace: nothing else listens there
CLONE_NEWNET = 0x40000000
USER = "vault"


def missing_tools() -> str | None:
    """Why this machine cannot run the Orthanc tests, or None."""
    for path in (ORTHANC, DICOMWEB_PLUGIN):
        if not os.path.exists(path):
            return f"{path} is not installed (apt-get install orthanc orthanc-dicomweb)"
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        return "cannot create a network namespace (needs root or CAP_SYS_ADMIN)"
    return None


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(1 << 16):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


class NetnsBridge:
    """127.0.0.1:<port> here -> 127.0.0.1:<target> inside the namespace ``netns_fd`` names."""

    def __init__(self, netns_fd: int, target: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._netns_fd, self._target = netns_fd, target
        self._ready = threading.Event()
        self._error: OSError | None = None
        self._sockets: list[socket.socket] = []
        self._relays: list[threading.Thread] = []
        self._lock = threading.Lock()  # close() against an accept() just made
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="netns bridge", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    def _serve(self) -> None:
        try:
            _setns(self._netns_fd)  # this thread (and the relays it starts) only: see setns(2)
        except OSError as exc:
            self._error = exc
            return
        finally:
            self._ready.set()
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # shut down by close()
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()  # Orthanc is stopped: the client sees its connection closed
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
                for a, b in ((client, upstream), (upstream, client)):
                    relay = threading.Thread(target=_pipe, args=(a, b), name="netns relay", daemon=True)
                    relay.start()
                    self._relays.append(relay)

    @property
    def threads(self) -> list[threading.Thread]:
        """The listener's thread and every relay it started."""
        with self._lock:
            return [self._thread, *self._relays]

    def close(self) -> None:
        """Stop accepting, cut every relayed connection and wait for every thread. A blocked
        accept() or recv() is woken by shutdown(), not by close() from another thread."""
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        self.listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for relay in self._relays:
            relay.join(10)
        for s in self._sockets:
            s.close()


class Orthanc:
    """One Orthanc with DICOMweb and basic auth, in a namespace with only ``lo``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.password = secrets.token_urlsafe(16)
        self.proc: subprocess.Popen | None = None
        self.netns_fd: int | None = None
        self.bridge: NetnsBridge | None = None

    @property
    def dicomweb_url(self) -> str:
        assert self.bridge is not None
        return f"http://127.0.0.1:{self.bridge.port}/dicom-web"

    def _config(self) -> Path:
        storage = self.folder / "storage"
        storage.mkdir(exist_ok=True)
        config = {
            "Name": "vault-test-pacs", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": PORT, "DicomServerEnabled": False, "RemoteAccessAllowed": True,
            "AuthenticationEnabled": True, "RegisteredUsers": {USER: self.password},
            "Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StorageCompression": False, "HttpThreadsCount": 4, "ConcurrentJobs": 1,
        }
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config))
        return path

    def start(self) -> None:
        log = (self.folder / "orthanc.log").open("ab")
        if self.netns_fd is None:
            # unshare execs sh, which execs Orthanc: one pid, in a fresh namespace with only lo
            self.proc = subprocess.Popen(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$1"',
                                          ORTHANC, str(self._config())], stdout=log, stderr=subprocess.STDOUT)
            self.netns_fd = self._await_namespace(self.proc.pid)
            links = subprocess.run(["nsenter", "-t", str(self.proc.pid), "-n", "ip", "-o", "link"],
                                   capture_output=True, text=True, check=True).stdout
            names = [line.split(":")[1].strip() for line in links.splitlines()]
            assert names == ["lo"], f"Orthanc's namespace must hold only lo, found {names}"
            self.bridge = NetnsBridge(self.netns_fd, PORT)
        else:  # restarted in the namespace kept open by our descriptor
            self.proc = subprocess.Popen(["nsenter", f"--net=/proc/self/fd/{self.netns_fd}", ORTHANC,
                                          str(self._config())], stdout=log, stderr=subprocess.STDOUT,
                                         pass_fds=(self.netns_fd,))
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                self.rest("GET", "/system")
                return
            except (OSError, urllib.error.URLError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("Orthanc did not start: " + (self.folder / "orthanc.log").read_text()[-2000:])
                time.sleep(0.2)

    @staticmethod
    def _await_namespace(pid: int) -> int:
        mine = os.stat("/proc/self/ns/net").st_ino
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError):
                if os.stat(f"/proc/{pid}/ns/net").st_ino != mine:
                    return os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            time.sleep(0.02)
        raise RuntimeError("Orthanc's network namespace did not appear")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def close(self) -> None:
        self.stop()
        if self.bridge is not None:
            self.bridge.close()
        if self.netns_fd is not None:
            os.close(self.netns_fd)

    def rest(self, method: str, path: str, body: bytes | None = None) -> bytes:
        assert self.bridge is not None
        request = urllib.request.Request(f"http://127.0.0.1:{self.bridge.port}{path}", data=body, method=method)
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{USER}:{self.password}".encode()).decode())
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def instance_file(self, sop_instance_uid: str) -> bytes:
        """The stored DICOM file of one SOP Instance UID (REST /tools/lookup, /instances/{id}/file)."""
        found = [r for r in json.loads(self.rest("POST", "/tools/lookup", sop_instance_uid.encode()))
                 if r.get("Type") == "Instance"]
        assert len(found) == 1, found
        return self.rest("GET", f"/instances/{found[0]['ID']}/file")

    def instance_count(self) -> int:
        return len(json.loads(self.rest("GET", "/instances")))
