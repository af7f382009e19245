"""A real S3-compatible server for the tests: moto's standalone server as a subprocess on
127.0.0.1, on a free port, that can be paused (SIGSTOP), resumed, killed and restarted."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

#: credentials the tests use; moto accepts any, so they only have to be recognisable
ACCESS_KEY = "AKIACFACTTESTKEY0001"
SECRET_KEY = "cfact-env-secret-d41d8cd98f00b204e980"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1; ``endpoint`` is its URL."""

    def __init__(self, log_dir: str) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(log_dir, f"moto-{self.port}.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=log, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited: {open(self.log_path).read()[-2000:]}")
            try:
                with urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"moto server did not answer on {self.endpoint} in {timeout} s")

    def stop(self) -> None:
        """Kill the server (its in-memory buckets are lost)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a paused process must run to die cleanly
            self.proc.kill()
            self.proc.wait(30)
        self.proc = None

    def pause(self) -> None:
        """Freeze the server: connections are accepted by the kernel but nothing answers."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint}

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of a real S3 server that injects the failures object
    stores really send, and counts requests in flight.

    ``faults`` maps an HTTP method to what the *first* request for each distinct path with that
    method gets instead of the server's answer: an HTTP status with S3's XML error body (503
    ``SlowDown`` is how S3 throttles, 500 ``InternalError``), or ``"reset"`` (the connection
    is closed without an answer). The retry of the same request then goes through. Nothing is
    random, so a test can count exactly what was injected.
    """

    _CODES = {500: "InternalError", 503: "SlowDown", 502: "BadGateway"}

    def __init__(self, upstream: str, faults: dict[str, Any], delay: float = 0.0) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        self.upstream = urlsplit(upstream)
        self.faults = dict(faults)
        self.delay = delay  # seconds each forwarded request takes at least (overlap shows)
        self.injected: dict[str, int] = {}
        self.forwarded = 0
        self.inflight = 0
        self.max_inflight = 0
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _serve(self, h: Any) -> None:
        import http.client

        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        key = (h.command, h.path.split("?", 1)[0])
        with self._lock:
            fault = self.faults.get(h.command) if key not in self._seen else None
            self._seen.add(key)
            if fault is not None:
                self.injected[str(fault)] = self.injected.get(str(fault), 0) + 1
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if fault == "reset":
                h.close_connection = True
                h.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault is not None:
                code = int(fault)
                xml = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>"
                       f"{self._CODES.get(code, 'InternalError')}</Code><Message>injected by "
                       f"the test proxy</Message></Error>").encode()
                h.send_response(code)
                h.send_header("Content-Type", "application/xml")
                h.send_header("Content-Length", str(len(xml)))
                h.end_headers()
                if h.command != "HEAD":
                    h.wfile.write(xml)
                return
            if self.delay:
                time.sleep(self.delay)
            conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port,
                                              timeout=60)
            headers = {k: v for k, v in h.headers.items() if k.lower() != "connection"}
            conn.request(h.command, h.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            h.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    h.send_header(k, v)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(data)
            conn.close()
            with self._lock:
                self.forwarded += 1
        finally:
            with self._lock:
                self.inflight -= 1
