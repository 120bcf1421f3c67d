"""A loopback HTTP server for weights-download tests: files from memory, requests counted, bounded in time.

No traffic leaves 127.0.0.1. ``truncate`` holds paths whose body stops halfway (the full Content-Length
is announced first), as a dropped connection does.
"""

from __future__ import annotations

import threading
from collections import Counter
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator


class WeightsServer:
    def __init__(self, httpd: ThreadingHTTPServer):
        self.httpd = httpd
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: Counter[str] = Counter()

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def url(self, path: str) -> str:
        return self.root + path.lstrip("/")


@contextmanager
def serve() -> Iterator[WeightsServer]:
    server: WeightsServer

    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a stuck client never holds a thread for long

        def do_GET(self):  # noqa: N802 (http.server's name)
            path = self.path.split("?")[0]
            server.requests[path] += 1
            body = server.files.get(path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if path in server.truncate else body)
            self.wfile.flush()
            if path in server.truncate:
                self.close_connection = True

        def log_message(self, *args):  # quiet
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server = WeightsServer(httpd)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
