"""SIGTERM on the embedded default (one real ``vault serve`` on SQLite): the node stops
accepting at once, an upload whose body is still arriving finishes with 201, a kept-alive
idle connection is closed, and the process exits 0. The same on PostgreSQL with two nodes
is part of tests/system/test_multinode.py; uploads that outlast VAULT_SHUTDOWN_TIMEOUT are
cancelled (tests/media/test_shutdown.py)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import time

from tests.system.cluster import Node, jpeg, vault
from tests.system.test_multinode import TrickleUpload, _refuses_connections


def test_sigterm_lets_an_upload_in_flight_finish_then_exits_0(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env.update(VAULT_DATA_DIR=str(tmp_path / "data"), VAULT_LOG_LEVEL="INFO", VAULT_DECODER_WORKERS="1")
    vault(env, "migrate")
    vault(env, "tenant", "create", "north")
    token = vault(env, "token", "create", "--tenant", "north", "--role", "practitioner", "--label",
                  "camera app").stdout.strip().splitlines()[-1]
    node = Node(env, tmp_path, "solo")
    node.start()
    try:
        node.wait_ready()
        status, body = node.json("POST", "/v1/patients", token, {"external_ref": "GS-1"})
        assert status == 201, body
        idle = http.client.HTTPConnection("127.0.0.1", node.port, timeout=30)  # kept alive, idle at SIGTERM
        idle.request("GET", "/healthz")
        assert idle.getresponse().read() == b'{"status":"ok"}'

        upload = TrickleUpload(node, f"/v1/patients/{body['id']}/media?phase=after", token, jpeg(7, (1600, 1200)))
        upload.start()
        assert upload.half_sent.wait(30)
        time.sleep(0.2)  # the node is reading the body
        node.terminate()
        signalled = time.monotonic()
        while not _refuses_connections(node):
            assert time.monotonic() - signalled < 10, "still accepting connections after SIGTERM"
            time.sleep(0.02)
        assert node.proc is not None and node.proc.poll() is None  # the upload holds it
        # The idle kept-alive connection was closed: a request on it finds it gone.
        try:
            idle.request("GET", "/healthz")
            closed = idle.getresponse().status != 200
        except (ConnectionError, http.client.HTTPException, socket.timeout):
            closed = True
        assert closed
        upload.go_on.set()
        upload.join(60)
        assert b" 201 " in upload.status_line, (upload.answer[-300:], node.tail())
        head, _, payload = upload.answer.partition(b"\r\n\r\n")
        assert b"Connection: close" in head  # the connection ends with its answer
        assert json.loads(payload)["status"] == "ready"
        assert node.wait_exit() == 0, node.tail()
        print(f"\nexit 0 {time.monotonic() - signalled:.1f} s after SIGTERM, the upload in flight answered 201")
    finally:
        node.kill()
    # The upload is there after a restart.
    node.start()
    try:
        node.wait_ready()
        status, listed = node.json("GET", f"/v1/patients/{body['id']}/media", token)
        assert status == 200 and [m["status"] for m in listed["items"]] == ["ready"]
    finally:
        node.terminate()
        node.wait_exit()
        node.kill()
