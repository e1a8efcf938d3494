"""gcfork.warmup and gcfork.fastexit: in-process WSGI requests, real exits."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from gcfork import fastexit, warmup
from tests.conftest import REPO


class Body:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        self.closed = True


class App:
    """Answers /ok, /redirect, /missing, /boom; remembers environs and bodies."""

    def __init__(self) -> None:
        self.environs: list[dict[str, Any]] = []
        self.bodies: list[Body] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Body:
        self.environs.append(environ)
        path = environ["PATH_INFO"]
        if path == "/boom":
            raise RuntimeError("kaput")
        status = {"/ok": "200 OK", "/redirect": "302 Found", "/error": "500 Internal Server Error"}
        start_response(status.get(path, "404 Not Found"), [("Content-Type", "text/plain")])
        body = Body([b"hello ", b"world"])
        self.bodies.append(body)
        return body


def test_paths_run_in_order_bodies_consumed_and_closed() -> None:
    app = App()
    results = warmup.warm_up(app, ["/ok?x=1", "/redirect"], headers={"Accept-Language": "fr"})
    assert [(r.path, r.status, r.body_bytes) for r in results] == [
        ("/ok?x=1", 200, 11), ("/redirect", 302, 11)]
    assert all(body.closed for body in app.bodies)
    environ = app.environs[0]
    assert environ["REQUEST_METHOD"] == "GET" and environ["PATH_INFO"] == "/ok"
    assert environ["QUERY_STRING"] == "x=1" and environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["HTTP_HOST"] == "127.0.0.1" and environ["HTTP_ACCEPT_LANGUAGE"] == "fr"


@pytest.mark.parametrize(("path", "status", "words"), [
    ("/missing", 404, "answered '404 Not Found'"),
    ("/error", 500, "answered '500 Internal Server Error'"),
    ("/boom", None, "raised RuntimeError('kaput')"),
])
def test_a_failing_path_is_named(path: str, status: int | None, words: str) -> None:
    with pytest.raises(warmup.WarmupError) as info:
        warmup.warm_up(App(), ["/ok", path, "/ok"])
    assert info.value.path == path and info.value.status == status
    assert path in str(info.value) and words in str(info.value)


def test_callable_gets_the_app_and_its_errors_are_wrapped() -> None:
    seen: list[object] = []
    app = App()
    assert warmup.warm_up(app, seen.append) == []
    assert seen == [app]

    def broken(app: object) -> None:
        raise KeyError("cache")

    with pytest.raises(warmup.WarmupError, match="<callable> raised KeyError"):
        warmup.warm_up(app, broken)


def test_bad_paths_are_refused() -> None:
    with pytest.raises(TypeError):
        warmup.warm_up(App(), "/ok")
    with pytest.raises(ValueError, match="must start with '/'"):
        warmup.wsgi_environ("ok")


def test_close_connections_only_touches_an_imported_django(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "django.db", raising=False)
    assert warmup.close_connections() == []
    assert "django" not in sys.modules or "django.db" not in sys.modules
    closed: list[bool] = []
    fake = types.ModuleType("django.db")
    fake.connections = types.SimpleNamespace(  # type: ignore[attr-defined]
        close_all=lambda: closed.append(True))
    monkeypatch.setitem(sys.modules, "django.db", fake)
    assert warmup.close_connections() == ["django.db.connections"]
    assert closed == [True]


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=30,
    )


def test_fast_exit_keeps_the_status_flushes_logs_and_skips_atexit() -> None:
    result = run("""
        import atexit, logging, sys
        from gcfork.fastexit import fast_exit
        logging.basicConfig(stream=sys.stderr, level=logging.INFO)
        atexit.register(lambda: print("atexit ran"))
        sys.stdout.write("buffered line")  # no newline: still in the buffer
        logging.getLogger("w").info("worker exiting")
        try:
            sys.exit(4)  # gunicorn: APP_LOAD_ERROR
        finally:
            fast_exit()
    """)
    assert result.returncode == 4
    assert result.stdout == "buffered line"
    assert "worker exiting" in result.stderr


def test_exit_status_in_flight() -> None:
    assert fastexit.exit_status_in_flight() == 0
    for raised, status in ((SystemExit(None), 0), (SystemExit(3), 3), (SystemExit("bye"), 1),
                           (RuntimeError(), 1)):
        try:
            raise raised
        except BaseException:
            assert fastexit.exit_status_in_flight() == status


# -- ASGI ---------------------------------------------------------------------


class Lifespan:
    """An ASGI 3 app that records its lifespan and requests; ``fail`` makes
    its startup fail, ``speaks`` False makes it refuse the lifespan scope."""

    def __init__(self, fail: bool = False, speaks: bool = True) -> None:
        self.events: list[str] = []
        self.fail = fail
        self.speaks = speaks

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            if not self.speaks:
                raise RuntimeError("no lifespan here")
            while True:
                message = await receive()
                self.events.append(message["type"])
                if message["type"] == "lifespan.startup":
                    scope["state"]["pool"] = "open"
                    kind = "failed" if self.fail else "complete"
                    await send({"type": f"lifespan.startup.{kind}", "message": "no database"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        self.events.append(f"GET {scope['path']}?{scope['query_string'].decode()} "
                           f"state={scope['state'].get('pool')}")
        assert (await receive())["type"] == "http.request"
        status = 200 if scope["path"] == "/ok" else 404
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"hello ", "more_body": True})
        await send({"type": "http.response.body", "body": b"world"})


def test_an_asgi_app_is_driven_over_asgi_between_lifespan_startup_and_shutdown() -> None:
    app = Lifespan()
    results = warmup.warm_up(app, ["/ok?x=1", "/ok"])
    assert [(r.path, r.status, r.body_bytes) for r in results] == [
        ("/ok?x=1", 200, 11), ("/ok", 200, 11)]
    assert app.events == ["lifespan.startup", "GET /ok?x=1 state=open", "GET /ok? state=open",
                          "lifespan.shutdown"]
    # The loop is closed: none is left set for the thread that forks next.
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_an_asgi_app_without_lifespan_is_warmed_up_all_the_same() -> None:
    app = Lifespan(speaks=False)
    assert [r.status for r in warmup.warm_up(app, ["/ok"])] == [200]
    assert app.events == ["GET /ok? state=None"]


def test_asgi_failures_name_the_path_or_the_lifespan() -> None:
    with pytest.raises(warmup.WarmupError, match=r"GET /missing answered 'HTTP 404'"):
        warmup.warm_up(Lifespan(), ["/ok", "/missing"])
    with pytest.raises(warmup.WarmupError,
                       match="warm-up impossible: the app's lifespan startup failed: no database"):
        warmup.warm_up(Lifespan(fail=True), ["/ok"])


def test_an_app_of_the_other_protocol_is_refused_in_one_line() -> None:
    with pytest.raises(warmup.WarmupError) as wsgi_server:
        warmup.warm_up(Lifespan(), ["/ok"], interface="wsgi")
    assert "is an ASGI app" in str(wsgi_server.value) and "\n" not in str(wsgi_server.value)
    with pytest.raises(warmup.WarmupError) as asgi_server:
        warmup.warm_up(App(), ["/ok"], interface="asgi")
    assert "is not an ASGI 3 app" in str(asgi_server.value)


def test_a_fastapi_app_is_warmed_up_and_its_thread_pool_is_gone_before_the_fork() -> None:
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()

    @app.get("/sync")
    def sync_endpoint() -> dict[str, int]:  # FastAPI runs it in its thread pool
        return {"ok": 1}

    before = warmup.running_threads()
    results = warmup.warm_up(app, ["/sync", "/sync"])
    assert [r.status for r in results] == [200, 200]
    assert warmup.threads_started_since(before) == []


def test_an_async_warmup_callable_runs_in_its_own_loop() -> None:
    app = Lifespan()

    async def warm(asgi_app: Any) -> None:
        await asyncio.sleep(0)
        app.events.append("warmed")

    assert warmup.warm_up(app, warm) == []
    assert app.events == ["warmed"]
