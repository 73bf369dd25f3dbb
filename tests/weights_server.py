"""A real HTTP(S) server on 127.0.0.1 standing in for the official weights bucket in tests.

It serves the bytes the tests give it under URL paths like the bucket's
(`/mobilenet_v2/<file>.h5`), counts requests and bytes sent per path, and can misbehave per
path (`modes`, see MODES), redirect (`redirects`: path -> (status, Location)), or send slowly
(`delay` seconds between 64 KiB blocks). Whatever a mode does, it stops when the client hangs up
or the server is shut down, and never runs longer than LONGEST_S.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BLOCK = 1 << 16
LONGEST_S = 120.0
MODES = {
    "ok": "the file",
    "corrupt": "the file with one byte changed",
    "truncate": "announces the file's length, sends half, hangs up",
    "error": "HTTP 500",
    "endless": "no Content-Length, and a body that never ends",
    "huge length": "announces 10 GiB, then sends for as long as the client reads",
    "drip": "announces the file's length, then sends `drip_bytes` bytes a second",
    "silent": "accepts the connection and the request, and never answers",
    "drip headers": "sends the status line a byte a second",
}
HUGE_LENGTH = 10 << 30


class WeightsServer:
    def __init__(self, tls: tuple[Path, Path] | None = None):
        """`tls`: (certificate, key) files to serve https with."""
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}
        self.redirects: dict[str, tuple[int, str]] = {}
        self.delay = 0.0
        self.drip_bytes = 5
        self.requests: Counter = Counter()
        self.bytes_sent: Counter = Counter()
        self.finished_at: dict[str, float] = {}
        self.first_block_sent = threading.Event()
        self.stopped = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path
                server.requests[path] += 1
                try:
                    self.answer(path)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError, TimeoutError):
                    return  # the client went away (gave up, or a killed process)
                server.finished_at[path] = time.time()
                # HTTP/1.0: the connection closes after the response.

            def answer(self, path):
                if path in server.redirects:
                    status, location = server.redirects[path]
                    self.send_response(status)
                    self.send_header("Location", location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path not in server.files:
                    self.send_error(404)
                    return
                mode = server.modes.get(path, "ok")
                if mode == "error":
                    self.send_error(500, "Internal Server Error")
                    return
                if mode == "silent":
                    server.stopped.wait(LONGEST_S)
                    return
                if mode == "drip headers":
                    for byte in b"HTTP/1.0 200 OK\r\n":
                        if not self.send(path, bytes([byte]), pause=1.0):
                            return
                    return
                data = server.files[path]
                if mode == "corrupt":  # same length, one byte changed
                    data = data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if mode != "endless":
                    length = HUGE_LENGTH if mode == "huge length" else len(data)
                    self.send_header("Content-Length", str(length))
                self.end_headers()
                if mode in ("endless", "huge length"):
                    deadline = time.monotonic() + LONGEST_S
                    while time.monotonic() < deadline and self.send(path, data[:BLOCK]):
                        pass
                    return
                if mode == "truncate":
                    data = data[: len(data) // 2]
                if mode == "drip":
                    for start in range(0, len(data), server.drip_bytes):
                        if not self.send(path, data[start : start + server.drip_bytes], 1.0):
                            return
                    return
                for start in range(0, len(data), BLOCK):
                    self.send(path, data[start : start + BLOCK], server.delay)

            def send(self, path, block: bytes, pause: float = 0.0) -> bool:
                """Writes `block`, then waits `pause` s; False once the server is shutting
                down."""
                self.wfile.write(block)
                self.wfile.flush()
                server.bytes_sent[path] += len(block)
                server.first_block_sent.set()
                return not (pause and server.stopped.wait(pause))

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        # A short poll interval: shutting down waits for one.
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.httpd.server_address[1]}/"

    def serve(self, subdir: str, file_name: str, data: bytes, mode: str = "ok") -> str:
        """Serve `data` at `/<subdir>/<file_name>`; returns that path."""
        assert mode in MODES, mode
        path = f"/{subdir}/{file_name}"
        self.files[path] = data
        self.modes[path] = mode
        return path

    def __enter__(self) -> WeightsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def self_signed_certificate(directory: Path) -> tuple[Path, Path] | None:
    """(certificate, key) for 127.0.0.1, made with the openssl command; None without it."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
            + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
            + ["-addext", "subjectAltName=IP:127.0.0.1"],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return cert, key


def partial_downloads(directory: Path, file_name: str, timeout: float = 60.0) -> list:
    """The `.part` files of `file_name` in `directory` once one holds data (a download under way),
    waiting at most `timeout` seconds; [] if none did by then."""
    deadline = time.monotonic() + timeout
    while True:
        parts = sorted(directory.glob(f".{file_name}.*.part")) if directory.is_dir() else []
        if any(p.stat().st_size > 0 for p in parts if p.exists()):
            return parts
        if time.monotonic() > deadline:
            return []
        time.sleep(0.05)
