"""A real HTTP proxy on loopback in front of moto's server, answering with faults on command.

Code under test talks to the proxy as its S3 (or SQS) endpoint; the proxy forwards every request to moto
unchanged, unless a rule says otherwise:

    proxy.fail(503, match=s3_op("HeadObject", bucket=b), times=2)   # two 503s, then forward again
    proxy.drop(match=s3_op("GetObject"))                            # close the connection, no answer
    proxy.truncate(match=s3_op("GetObject"), times=1)               # headers and half the body, then close
    proxy.after(s3_op("HeadObject"), lambda: overwrite(), times=1)  # act once moto answered, before relaying
    proxy.stop(); proxy.start()                                     # nothing listening on the port; back

Every request seen is kept in `proxy.requests` as (operation, bucket, answered status or fault name).
No mock anywhere: botocore speaks HTTP to a socket, and moto answers over HTTP.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Request:
    """What the proxy knows about one request: enough to match S3 and SQS operations."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @property
    def bucket(self) -> str | None:
        parts = self.path.lstrip("/").split("/", 1)
        return parts[0] or None

    @property
    def key(self) -> str | None:
        parts = self.path.lstrip("/").split("/", 1)
        return parts[1] if len(parts) == 2 and parts[1] else None

    @property
    def operation(self) -> str:
        """The AWS operation name: SQS from its X-Amz-Target, S3 from method, path and query."""
        target = self.headers.get("x-amz-target", "")
        if target:
            return target.rsplit(".", 1)[-1]
        if self.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            action = parse_qs(self.body.decode("utf-8", "replace")).get("Action")  # AWS query protocol
            if action:
                return action[0]
        if self.key is None:
            if self.method == "GET":
                return "ListObjectsV2" if "list-type" in self.query else "ListObjects"
            return {"PUT": "CreateBucket", "HEAD": "HeadBucket", "DELETE": "DeleteBucket"}.get(
                self.method, self.method
            )
        return {"HEAD": "HeadObject", "GET": "GetObject", "PUT": "PutObject", "DELETE": "DeleteObject"}.get(
            self.method, self.method
        )

    @property
    def is_sqs(self) -> bool:
        return (
            "x-amz-target" in self.headers or self.operation.endswith("Message") or "Queue" in self.operation
        )


Match = Callable[[Request], bool]


def s3_op(operation: str, *, bucket: str | None = None) -> Match:
    """Matches one S3 operation, optionally on one bucket only."""
    return lambda r: r.operation == operation and (bucket is None or r.bucket == bucket)


def sqs_op(operation: str) -> Match:
    return lambda r: r.is_sqs and r.operation == operation


def any_request(_: Request) -> bool:
    return True


@dataclass
class _Rule:
    match: Match
    kind: str  # "status", "drop", "truncate", "after"
    times: int | None  # None = until cleared
    status: int = 503
    action: Callable[[], None] | None = None

    def take(self) -> bool:
        if self.times is None:
            return True
        if self.times <= 0:
            return False
        self.times -= 1
        return True


@dataclass
class FaultProxy:
    upstream: str
    port: int = 0
    requests: list[tuple[str, str | None, str]] = field(default_factory=list)
    _rules: list[_Rule] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _sockets: set[socket.socket] = field(default_factory=set)

    # --- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        """Listen on loopback (the same port again after `stop`)."""
        proxy = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def process_request(self, request, client_address):
                with proxy._lock:
                    proxy._sockets.add(request)
                super().process_request(request, client_address)

            def shutdown_request(self, request):
                with proxy._lock:
                    proxy._sockets.discard(request)
                super().shutdown_request(request)

        self._server = Server(("127.0.0.1", self.port), _handler_for(self))
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True, name="fault-proxy").start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection: the endpoint is down, nothing answers."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            open_sockets, self._sockets = list(self._sockets), set()
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- faults ----------------------------------------------------------------------------------------
    def fail(self, status: int = 503, *, match: Match = any_request, times: int | None = None) -> None:
        """Answer `status` (with an S3 or SQS error body) instead of forwarding."""
        self._add(_Rule(match, "status", times, status=status))

    def drop(self, *, match: Match = any_request, times: int | None = None) -> None:
        """Close the connection without answering."""
        self._add(_Rule(match, "drop", times))

    def truncate(self, *, match: Match = any_request, times: int | None = None) -> None:
        """Forward, relay the headers and half the body, then close the connection."""
        self._add(_Rule(match, "truncate", times))

    def after(self, match: Match, action: Callable[[], None], *, times: int | None = 1) -> None:
        """Forward; once moto has answered, run `action`, then relay moto's answer."""
        self._add(_Rule(match, "after", times, action=action))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def seen(self, operation: str, bucket: str | None = None) -> list[str]:
        """Outcomes (status or fault) of the requests of one operation seen so far."""
        with self._lock:
            return [o for op, b, o in self.requests if op == operation and (bucket is None or b == bucket)]

    def _add(self, rule: _Rule) -> None:
        with self._lock:
            self._rules.append(rule)

    def _rule_for(self, request: Request) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.match(request) and rule.take():
                    return rule
        return None

    def _record(self, request: Request, outcome: str) -> None:
        with self._lock:
            self.requests.append((request.operation, request.bucket, outcome))


def _error_body(request: Request, status: int) -> tuple[bytes, str]:
    if request.is_sqs:
        body = f'{{"__type": "InternalError", "message": "injected {status}"}}'
        return body.encode(), "application/x-amz-json-1.0"
    code = {500: "InternalError", 503: "ServiceUnavailable"}.get(status, "InternalError")
    body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>injected {status}</Message></Error>"
    return body.encode(), "application/xml"


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    upstream = urlsplit(proxy.upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects

        def log_message(self, *args) -> None:  # quiet
            pass

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _handle(self) -> None:
            body = self._read_body()
            parts = urlsplit(self.path)
            request = Request(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query, keep_blank_values=True),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
            rule = proxy._rule_for(request)
            if rule is not None and rule.kind == "drop":
                proxy._record(request, "dropped")
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if rule is not None and rule.kind == "status":
                proxy._record(request, str(rule.status))
                payload, content_type = _error_body(request, rule.status)
                self.send_response(rule.status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                return

            headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
            headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                status, reply_headers = response.status, response.getheaders()
            finally:
                conn.close()
            if rule is not None and rule.kind == "after" and rule.action is not None:
                rule.action()  # the race: moto has answered, the caller has not seen the answer yet
            proxy._record(
                request, "truncated" if rule is not None and rule.kind == "truncate" else str(status)
            )
            self.send_response_only(status)
            for name, value in reply_headers:
                if name.lower() not in (
                    "transfer-encoding",
                    "connection",
                    "content-length",
                    "date",
                    "server",
                ):
                    self.send_header(name, value)
            declared = (
                next((v for n, v in reply_headers if n.lower() == "content-length"), "0")
                if self.command == "HEAD"
                else str(len(payload))
            )
            self.send_header("Content-Length", declared)
            self.end_headers()
            if self.command == "HEAD":
                return
            if rule is not None and rule.kind == "truncate":
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(payload)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    return Handler
