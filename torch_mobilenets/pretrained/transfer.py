"""One HTTP(S) transfer under the download rules, whatever the server does:

- **Size.** A response announcing more than the caller's limit (Content-Length) is refused
  before a byte of its body is read, and a body is never read past the limit, announced or not.
- **Stalls.** A transfer fails as soon as less than STALL_MIN_BYTES arrived in a window of
  `stall_window()` seconds (STALL_WINDOW_S, or $TORCH_MOBILENETS_DOWNLOAD_STALL_S), from the
  first request to the last byte, headers and redirects included. A socket timeout alone cannot
  do this: it bounds the wait for each read, and a server dripping a byte a second never
  reaches it. So every read of the socket is timed against the rule's deadline.
- **Redirects.** At most MAX_REDIRECTS, to http or https only, never from https to http, and
  the body of a redirect is never read.

Every failure is a `TransferError` whose message says what happened; the caller adds the URL.
Proxies set in the environment are used, as by urllib.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import io
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

from .._version import __version__

STALL_WINDOW_S = 30.0
STALL_WINDOW_ENV = "TORCH_MOBILENETS_DOWNLOAD_STALL_S"
STALL_MIN_BYTES = 1024
MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
_BLOCK = 1 << 16


class TransferError(Exception):
    """A transfer refused or broken off; the message says why (not which URL)."""


class TooLarge(TransferError):
    """The response announces, or its body goes on for, more than the limit."""


def stall_window() -> float:
    """The stall rule's window in seconds: $TORCH_MOBILENETS_DOWNLOAD_STALL_S, or 30."""
    text = os.environ.get(STALL_WINDOW_ENV, "")
    if not text:
        return STALL_WINDOW_S
    try:
        window = float(text)
    except ValueError:
        window = -1.0
    if not window > 0:  # also NaN
        raise ValueError(f"{STALL_WINDOW_ENV}={text!r}: expected a number of seconds above 0")
    return window


class _StallClock:
    """The deadline of the stall rule. It keeps the fewest latest arrivals that add up to
    STALL_MIN_BYTES: the rule holds until the oldest of them is a window old (or, before that
    much has arrived, until a window after the start)."""

    def __init__(self, window: float):
        self.window = window
        self.start = time.monotonic()
        self.received = 0
        self._latest: collections.deque = collections.deque()  # (time, bytes)
        self._latest_bytes = 0

    def arrived(self, count: int) -> None:
        self.received += count
        self._latest.append((time.monotonic(), count))
        self._latest_bytes += count
        while self._latest_bytes - self._latest[0][1] >= STALL_MIN_BYTES:
            self._latest_bytes -= self._latest.popleft()[1]

    def time_left(self) -> float:
        anchor = self.start
        if self._latest_bytes >= STALL_MIN_BYTES:
            anchor = max(anchor, self._latest[0][0])
        return anchor + self.window - time.monotonic()

    def stalled(self) -> TransferError:
        return TransferError(
            f"it stalled: less than {STALL_MIN_BYTES} bytes arrived in {self.window:g} s "
            f"({self.received} bytes in all; ${STALL_WINDOW_ENV} sets the window)"
        )


class _TimedSocketReader(io.RawIOBase):
    """Reads a socket with each read's timeout set to the time the stall rule has left, so that
    no read, however slowly the server sends, can wait past the rule's deadline."""

    def __init__(self, sock, clock: _StallClock):
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)
        self._clock = clock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self._clock.time_left()
        if left <= 0:
            raise self._clock.stalled()
        self._sock.settimeout(left)
        try:
            count = self._raw.readinto(buffer)
        except TimeoutError:
            raise self._clock.stalled() from None
        if count:
            self._clock.arrived(count)
        return count or 0

    def close(self) -> None:
        self._raw.close()
        super().close()


def _timed_connection(connection_class, clock: _StallClock):
    """An http.client connection class whose connect and responses obey the stall rule."""

    class TimedResponse(http.client.HTTPResponse):
        def __init__(self, sock, *args, **kwargs):
            super().__init__(sock, *args, **kwargs)
            self.fp.close()  # http.client's own reader; the socket stays open for ours
            self.fp = io.BufferedReader(_TimedSocketReader(sock, clock), _BLOCK)

    class TimedConnection(connection_class):
        response_class = TimedResponse

        def __init__(self, *args, **kwargs):
            kwargs["timeout"] = max(clock.time_left(), 0.001)  # connecting counts too
            super().__init__(*args, **kwargs)

    return TimedConnection


def _opener(clock: _StallClock) -> urllib.request.OpenerDirector:
    """urllib with proxies from the environment, http and https only, and no redirect handler:
    a redirect comes back as an HTTPError for `_follow` to judge, its body unread."""

    class TimedHTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(_timed_connection(http.client.HTTPConnection, clock), req)

    class TimedHTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            # No context given: http.client's default, which verifies certificates.
            return self.do_open(_timed_connection(http.client.HTTPSConnection, clock), req)

    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        TimedHTTPHandler(),
        TimedHTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def _redirect_target(url: str, location: str | None) -> str:
    if not location:
        raise TransferError("a redirect without a Location")
    target = urllib.parse.urljoin(url, location.strip())
    scheme = urllib.parse.urlsplit(target).scheme
    if scheme not in ("http", "https"):
        raise TransferError(f"a redirect to {target!r}; only http and https are followed")
    if urllib.parse.urlsplit(url).scheme == "https" and scheme == "http":
        raise TransferError(f"a redirect from https to plain http ({target!r}), refused")
    return target


def _open(url: str, clock: _StallClock) -> http.client.HTTPResponse:
    """The final response, after at most MAX_REDIRECTS redirects, with a 2xx status."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise TransferError("only http and https URLs are fetched")
    opener = _opener(clock)
    headers = {"User-Agent": f"torch-mobilenets/{__version__}"}
    for hop in range(MAX_REDIRECTS + 1):
        try:
            return opener.open(urllib.request.Request(url, headers=headers))
        except urllib.error.HTTPError as error:
            location = error.headers.get("Location") if error.headers else None
            error.close()
            if error.code not in _REDIRECTS:
                raise TransferError(f"HTTP {error.code} {error.reason}") from None
            if hop == MAX_REDIRECTS:
                raise TransferError(
                    f"more than {MAX_REDIRECTS} redirects (the last to {location!r})"
                ) from None
            url = _redirect_target(url, location)
        except urllib.error.URLError as error:  # refused, no route, no DNS, no connection
            if isinstance(error.reason, TimeoutError):
                raise clock.stalled() from None
            raise TransferError(str(error.reason)) from None
        except (OSError, http.client.HTTPException) as error:  # reset, bad status line
            raise TransferError(f"the request failed ({error!r})") from None
    raise AssertionError("unreachable")


class Response:
    """An open response that passed the checks on its headers; `blocks()` reads the body."""

    def __init__(self, response: http.client.HTTPResponse, clock: _StallClock, limit: int):
        self._response = response
        self._clock = clock
        self.limit = limit
        # http.client's reading of Content-Length (None if absent, invalid or chunked); taken
        # before any read, which counts it down.
        self.length = response.length

    def blocks(self) -> Iterator[bytes]:
        """The body, block by block; TransferError past the limit, on a stall, and when the body
        ends before its Content-Length."""
        received = 0
        while True:
            try:
                block = self._response.read(_BLOCK)
            except TransferError:
                raise
            except (OSError, http.client.HTTPException) as error:
                raise TransferError(
                    f"the transfer broke off after {received} bytes ({error!r})"
                ) from None
            if not block:
                break
            received += len(block)
            if received > self.limit:
                raise TooLarge(f"the body goes on past {self.limit} bytes, the most accepted")
            yield block
        # http.client ends a body cut short by the server as if it were complete.
        if self.length is not None and received != self.length:
            raise TransferError(f"the transfer ended after {received} of {self.length} bytes")


@contextlib.contextmanager
def get(url: str, limit: int) -> Iterator[Response]:
    """`url` opened under the rules above, its headers checked against `limit` bytes."""
    clock = _StallClock(stall_window())
    response = _open(url, clock)
    with response:
        checked = Response(response, clock, limit)
        if checked.length is not None and checked.length > limit:
            raise TooLarge(
                f"the server announces {checked.length} bytes (Content-Length), over the "
                f"{limit} accepted"
            )
        yield checked
