"""The HTTP server behind `saedb serve`: static pages plus the JSON API in ``api``.

Read-only by construction: backends are opened read-only (DuckDB file mode, Postgres
read-only transactions) and every API query is parameterised. Each request borrows a
backend from a small pool; queries run under a statement timeout.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlparse

import numpy as np
import psycopg

from saedb.app import api
from saedb.backends import DATABASE_ERRORS, Backend, connect, postgres_dsn, user_message
from saedb.backends.handoff import duckdb_file, write_requested
from saedb.backends.postgres import PostgresBackend, configure_reader
from saedb.embedders import get_embedder
from saedb.errors import DatabaseBusyError, SaedbError
from saedb.search import document_vector

STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = frozenset(p.name for p in STATIC.iterdir() if p.is_file())
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
log = logging.getLogger("saedb.app")


class DatabaseUnavailable(Exception):
    """No working database connection could be had: the request gets a 503."""


class BackendPool:
    """Read-only backends shared by request threads. DuckDB: cursors of one read-only
    instance, which lets go of the file while another process asks to write it
    (``saedb.backends.handoff``: `saedb train` publishes while the app is up; requests meanwhile
    get 503 with Retry-After) and opens it again after. Postgres: a psycopg_pool that checks each
    connection before lending it and replaces broken ones, so the app recovers from restarts,
    failovers and terminated sessions."""

    WATCH_EVERY_S = 0.5  # how often a DuckDB pool looks for a writer's request

    def __init__(self, url: str, size: int, timeout_s: float) -> None:
        self.url, self.size, self.timeout_s = url, size, timeout_s
        self.primary = connect(url, read_only=True, statement_timeout_s=timeout_s)
        self.idle: queue.Queue[Backend] = queue.Queue()
        self.pg_pool = None
        if self.primary.dialect == "duckdb":
            self._open_siblings()
            self.lent = 0
            self.state = threading.Condition()  # guards open, lent
            self.open = True
            self.closed = threading.Event()
            self.file = duckdb_file(url)
            if self.file is not None:
                threading.Thread(target=self._watch_for_writers, daemon=True, name="saedb-handoff").start()
        else:
            from psycopg_pool import ConnectionPool

            self.pg_pool = ConnectionPool(
                postgres_dsn(url), min_size=1, max_size=size, open=True, kwargs={"autocommit": True}, check=ConnectionPool.check_connection,
                configure=lambda conn: configure_reader(conn, int(timeout_s * 1000)),
            )

    def _open_siblings(self) -> None:
        self.primary.prepare_search()  # type: ignore[attr-defined]  # now, not inside a request racing the statement timeout
        for _ in range(self.size):
            self.idle.put(self.primary.sibling(functions=True))  # type: ignore[attr-defined]

    def _close_duckdb(self) -> None:
        while not self.idle.empty():
            self.idle.get().close()
        self.primary.close()

    def _watch_for_writers(self) -> None:
        """Let go of the file while a writer asks for it; open it again when none does."""
        assert self.file is not None
        while not self.closed.wait(self.WATCH_EVERY_S):
            if not write_requested(self.file):
                continue
            with self.state:
                self.open = False
                if not self.state.wait_for(lambda: self.lent == 0, timeout=4 * self.timeout_s):
                    self.open = True  # a request outlived its statement timeout: try again later
                    continue
                self._close_duckdb()
            log.info("let go of %s for a writer", self.file)
            while write_requested(self.file) and not self.closed.wait(self.WATCH_EVERY_S):
                pass
            while not self.closed.is_set():
                try:
                    self.primary = connect(self.url, read_only=True, statement_timeout_s=self.timeout_s)
                    self._open_siblings()
                    break
                except DatabaseBusyError:  # the writer has not closed it yet
                    self.closed.wait(self.WATCH_EVERY_S)
                except (SaedbError, *DATABASE_ERRORS) as exc:  # keep trying: requests get 503 meanwhile
                    log.warning("cannot open %s again: %s", self.file, user_message(exc))
                    self.closed.wait(self.WATCH_EVERY_S)
            with self.state:
                self.open = True
                self.state.notify_all()
            log.info("serving %s again", self.file)

    @contextmanager
    def borrow(self) -> Iterator[Backend]:
        if self.pg_pool is not None:
            yield from self._borrow_postgres()
            return
        with self.state:
            if not self.state.wait_for(lambda: self.open, timeout=self.timeout_s):
                raise DatabaseUnavailable("the database file is being written by another process (saedb train); try again")
            self.lent += 1
        backend = self.idle.get()
        timer = threading.Timer(self.timeout_s, backend.con.interrupt)  # type: ignore[attr-defined]  # DuckDB has no statement_timeout
        timer.start()
        try:
            yield backend
        finally:
            timer.cancel()
            self.idle.put(backend)
            with self.state:
                self.lent -= 1
                self.state.notify_all()

    def _borrow_postgres(self) -> Iterator[Backend]:
        from psycopg_pool import PoolTimeout

        try:
            with self.pg_pool.connection(timeout=self.timeout_s) as conn:  # type: ignore[union-attr]
                yield PostgresBackend(self.url, conn=conn)
        except psycopg.errors.QueryCanceled:  # the statement timeout: answered as a slow query, not an outage
            raise
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise DatabaseUnavailable(str(exc).split("\n")[0]) from None

    def close(self) -> None:
        if self.pg_pool is not None:
            self.pg_pool.close()
            self.primary.close()
            return
        self.closed.set()
        with self.state:
            if self.open:
                self._close_duckdb()
                self.open = False


def _int(params: dict[str, list[str]], name: str, default: int | None = None, low: int = 0, high: int = 10**9) -> int:
    raw = params.get(name, [None])[0]
    if raw is None or raw == "":
        if default is None:
            raise api.ApiError(400, f"missing parameter {name!r}")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise api.ApiError(400, f"{name} must be an integer, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise api.ApiError(400, f"{name} must be between {low} and {high}")
    return value


def _pairs(params: dict[str, list[str]], name: str) -> list[tuple[int, float]]:
    """Repeated 'id:strength' parameters, e.g. f=12:0.5&f=40:-0.3."""
    pairs = []
    for raw in params.get(name, []):
        try:
            ident, strength = raw.split(":")
            pair = (int(ident), float(strength))
        except ValueError:
            raise api.ApiError(400, f"{name} must look like ID:STRENGTH, got {raw[:40]!r}") from None
        if not 0 <= pair[0] < 2**31:
            raise api.ApiError(400, f"{name} ids must be between 0 and {2**31 - 1}, got {ident[:20]}")
        if not np.isfinite(pair[1]) or abs(pair[1]) > 1:  # the fraction of the way toward the direction (Steering)
            raise api.ApiError(400, f"steering strength must be a number between -1 and 1, got {strength!r}")
        pairs.append(pair)
    return pairs


def _filter(params: dict[str, list[str]], side: str) -> api.DocumentFilter:
    """One side of the compare page: {side}_category, {side}_from, {side}_to (years)."""
    category = (params.get(f"{side}_category", [""])[0] or "").strip()
    if len(category) > 200:
        raise api.ApiError(400, f"{side}_category is longer than 200 characters")
    if "\x00" in category:  # no category holds one, and Postgres text cannot
        raise api.ApiError(400, f"{side}_category holds a NUL character")
    return api.DocumentFilter(category or None, _year(params, f"{side}_from"), _year(params, f"{side}_to"))


def _year(params: dict[str, list[str]], name: str) -> int | None:
    return None if not params.get(name, [""])[0] else _int(params, name, low=0, high=9999)


class App:
    def __init__(self, url: str, pool_size: int = 8, timeout_s: float = 10.0) -> None:
        self.pool = BackendPool(url, pool_size, timeout_s)
        self.embedder_name, _ = self.pool.primary.require_embedder()  # loaded by the first text search: a workspace
        self.embed_lock = threading.Lock()                            # whose vectors saedb cannot embed serves the rest

    def embed(self, text: str) -> np.ndarray:
        with self.embed_lock:
            return get_embedder(self.embedder_name).embed([text])[0]

    def route(self, path: str, params: dict[str, list[str]]) -> Any:
        endpoints: dict[str, Callable[[Backend], Any]] = {
            "/api/models": lambda b: api.models(b),
            "/api/search": lambda b: api.search(  # q: a text; doc: a document's key, searched for documents like it
                b, *self._query(b, params), _int(params, "model"), _pairs(params, "f"), _pairs(params, "fam"),
                _int(params, "limit", 10, 1, 100), params.get("corpus", [None])[0] or None,
                _year(params, "year_from"), _year(params, "year_to")),
            "/api/corpora": lambda b: api.corpora(b),
            "/api/categories": lambda b: api.categories(b),
            "/api/compare": lambda b: api.compare(b, _int(params, "model"), _filter(params, "a"), _filter(params, "b"),
                                                  overlap=params.get("overlap", ["leave-out"])[0]),
            "/api/labels": lambda b: api.find_features(b, self.embed, self._text(params), _int(params, "model"),
                                                       _int(params, "limit", 10, 1, 100)),
            "/api/feature": lambda b: api.feature(b, _int(params, "model"), _int(params, "id"), params.get("corpus", [None])[0] or None),
            "/api/families": lambda b: api.families(b, _int(params, "model")),
            "/api/family": lambda b: api.family(b, _int(params, "model"), _int(params, "id")),
            "/api/dashboard": lambda b: api.dashboard(b, _int(params, "model"), params.get("corpus", [None])[0] or None),
        }
        if path not in endpoints:
            raise api.ApiError(404, f"no such endpoint {path}")
        with self.pool.borrow() as backend:
            return endpoints[path](backend)

    def _query(self, backend: Backend, params: dict[str, list[str]]) -> tuple[Callable[[str], np.ndarray], str]:
        """(how the query becomes a vector, the query): the text q, or the document named by doc."""
        key = params.get("doc", [""])[0].strip()
        if key:
            return (lambda name: document_vector(backend, name)), key[:200]
        return self.embed, self._text(params)

    @staticmethod
    def _text(params: dict[str, list[str]]) -> str:
        text = params.get("q", [""])[0].strip()
        if not text:
            raise api.ApiError(400, "type something to search for")
        if len(text) > 2000:
            raise api.ApiError(400, "the search text is longer than 2000 characters")
        return text

    def handle(self, path: str, query: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET request."""
        if not path.startswith("/api/"):
            name = {"/": "index.html", "/favicon.ico": "favicon.svg"}.get(path, path.lstrip("/"))
            if name not in STATIC_FILES:  # only the shipped files: no path is ever resolved on disk
                return 404, "text/plain", b"not found"
            file = STATIC / name
            return 200, CONTENT_TYPES.get(file.suffix, "application/octet-stream"), file.read_bytes()
        try:
            status, body = 200, self.route(path, parse_qs(query))
        except api.ApiError as exc:
            status, body = exc.status, {"error": str(exc)}
        except DatabaseUnavailable as exc:
            status, body = 503, {"error": f"the database is unavailable: {exc}"}
        except SaedbError as exc:
            status, body = 400, {"error": str(exc)}
        except DATABASE_ERRORS as exc:
            message = user_message(exc)
            timed_out = "timeout" in message.lower() or "interrupt" in message.lower()
            status, body = (503, {"error": "the query took too long"}) if timed_out else (400, {"error": message})
        except Exception:  # noqa: BLE001 - never leak internals to the browser
            log.exception("request failed: %s?%s", path, query)
            status, body = 500, {"error": "internal error"}
        return status, "application/json", json.dumps(body).encode()


class ArrivalDeadlines:
    """Shuts a connection whose request has not fully arrived ``timeout_s`` after the server
    began waiting for it. A socket timeout only bounds the gap between two reads, so a client
    sending one header line every few seconds would hold its connection for ever."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.pending: dict[socket.socket, float] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        threading.Thread(target=self._reap, daemon=True, name="saedb-arrival-deadlines").start()

    def expect(self, connection: socket.socket) -> None:
        with self.lock:
            self.pending[connection] = time.monotonic() + self.timeout_s

    def arrived(self, connection: socket.socket) -> bool:
        """Stop the clock; False if it had already run out (the connection is being shut)."""
        with self.lock:
            return self.pending.pop(connection, None) is not None

    def _reap(self) -> None:
        while not self.stopped.wait(min(0.25, self.timeout_s / 4)):
            now = time.monotonic()
            with self.lock:
                late = [c for c, deadline in self.pending.items() if deadline <= now]
                for connection in late:
                    del self.pending[connection]
            for connection in late:
                try:
                    connection.shutdown(socket.SHUT_RDWR)  # the handler's read returns at once and it closes
                except OSError:
                    pass


class SaedbHTTPServer(ThreadingHTTPServer):
    """A thread per connection, with a deep listen backlog (the default 5 dropped bursts of
    parallel requests), a cap on open connections (past it a connection is closed at once) and
    a deadline on each request's arrival."""

    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int,
                 arrival_timeout_s: float) -> None:
        self.max_connections, self.open_connections = max_connections, 0
        self.connections_changed = threading.Condition()
        self.deadlines = ArrivalDeadlines(arrival_timeout_s)  # before binding: a failed bind calls server_close
        super().__init__(address, handler)

    def wait_for_connections(self, condition: Callable[[int], bool], timeout_s: float) -> bool:
        """Wait until ``condition(number of open connections)`` holds (tests, shutdown)."""
        with self.connections_changed:
            return self.connections_changed.wait_for(lambda: condition(self.open_connections), timeout_s)

    def _count(self, change: int) -> None:
        with self.connections_changed:
            self.open_connections += change
            self.connections_changed.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-response is normal: one line, no traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, socket.timeout)):
            log.info("client %s disconnected: %s", client_address[0] if client_address else "?", error)
            return
        log.exception("request from %s failed", client_address)

    def server_close(self) -> None:
        self.deadlines.stopped.set()
        super().server_close()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_changed:
            full = self.open_connections >= self.max_connections
            if not full:
                self.open_connections += 1
                self.connections_changed.notify_all()
        if full:
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._count(-1)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._count(-1)


def make_server(app: App, host: str = "127.0.0.1", port: int = 8080, idle_timeout_s: float = 30.0,
                max_connections: int = 512) -> ThreadingHTTPServer:
    """The HTTP server; a connection whose next request has not fully arrived ``idle_timeout_s``
    after the server began waiting for it is closed."""

    class Handler(BaseHTTPRequestHandler):
        timeout = idle_timeout_s
        server: SaedbHTTPServer

        def handle_one_request(self) -> None:
            self.server.deadlines.expect(self.connection)
            try:
                super().handle_one_request()
            finally:
                self.server.deadlines.arrived(self.connection)

        def parse_request(self) -> bool:
            parsed = super().parse_request()  # request line and headers have arrived (GET has no body)
            if not self.server.deadlines.arrived(self.connection):  # cut off mid-request: not a request
                self.close_connection = True
                return False
            return parsed

        def do_GET(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            status, content_type, body = app.handle(url.path, url.query)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            if status == 503:  # overloaded, a slow query or the database away: a fair answer, try again
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: object) -> None:
            log.debug(fmt, *args)

    return SaedbHTTPServer((host, port), Handler, max_connections, idle_timeout_s)
