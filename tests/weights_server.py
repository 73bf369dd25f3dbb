"""A real HTTP server on 127.0.0.1 standing in for the official weights bucket in tests.

It serves the bytes the tests give it under URL paths like the bucket's
(`/mobilenet_v2/<file>.h5`), counts requests per path, and can misbehave per path: serve other
bytes ("corrupt"), announce more bytes than it sends and hang up ("truncate"), answer 500
("error"), or send slowly (`delay` seconds between 64 KiB blocks).
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BLOCK = 1 << 16


class WeightsServer:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}
        self.delay = 0.0
        self.requests: Counter = Counter()
        self.bytes_sent: Counter = Counter()
        self.finished_at: dict[str, float] = {}
        self.first_block_sent = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path
                server.requests[path] += 1
                if path not in server.files:
                    self.send_error(404)
                    return
                mode = server.modes.get(path, "ok")
                if mode == "error":
                    self.send_error(500, "Internal Server Error")
                    return
                data = server.files[path]
                if mode == "corrupt":  # same length, one byte changed
                    data = data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if mode == "truncate":
                    data = data[: len(data) // 2]
                try:
                    for start in range(0, len(data), BLOCK):
                        self.wfile.write(data[start : start + BLOCK])
                        server.bytes_sent[path] += len(data[start : start + BLOCK])
                        server.first_block_sent.set()
                        if server.delay:
                            time.sleep(server.delay)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client went away (a killed process)
                server.finished_at[path] = time.time()
                # HTTP/1.0: the connection closes after the response, truncated or not.

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        # A short poll interval: shutting down waits for one.
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def serve(self, subdir: str, file_name: str, data: bytes, mode: str = "ok") -> str:
        """Serve `data` at `/<subdir>/<file_name>`; returns that path."""
        path = f"/{subdir}/{file_name}"
        self.files[path] = data
        self.modes[path] = mode
        return path

    def __enter__(self) -> WeightsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
