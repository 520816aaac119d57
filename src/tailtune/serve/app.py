"""``tailtune serve DIR``: an HTTP JSON server (FastAPI on uvicorn) for every classifier in DIR.

Endpoints (JSON; errors are ``{"error": "..."}`` with a 4xx status):

- ``POST /v1/{task}/predict`` ``{"texts": [...], "texts_b": [...]?}`` -> ``{"task", "predictions": [{"label",
  "score", "probabilities": {label: p}}], "warnings"?: [...]}`` (a warning: e.g. a task trained on text pairs sent
  texts without ``texts_b``);
- ``GET /v1/tasks`` -> every task's labels, preset, backbone and kind;
- ``PUT /v1/tasks/{task}`` loads ``DIR/{task}`` without a restart, ``DELETE /v1/tasks/{task}`` removes it;
- ``GET /health``; ``GET /metrics`` (Prometheus text format).

Concurrent requests, of any tasks, are batched together (``max_batch`` texts, ``max_wait_ms``).
The server binds 127.0.0.1 unless told otherwise; with a token, every ``/v1`` and ``/metrics`` call
needs ``Authorization: Bearer <token>``.
"""
# (no "from __future__ import annotations": FastAPI reads the endpoints' annotations at definition time)

import hmac
import signal
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

from ..errors import ArtefactError, ConfigError, TailtuneError
from .batcher import Batcher
from .host import ModelHost
from .metrics import Metrics


@dataclass
class ServeConfig:
    """Settings of ``tailtune serve``. Field docstrings double as CLI help."""

    host: str = "127.0.0.1"
    """address to bind (127.0.0.1: this machine only; 0.0.0.0 exposes the server to the network)"""
    port: int = 8000
    """port to listen on (0: any free port; the one chosen is printed)"""
    token: str | None = None
    """bearer token every /v1 and /metrics request must carry (none: no authentication)"""
    max_batch: int = 64
    """dynamic batching: at most this many texts per model call"""
    max_wait_ms: float = 5.0
    """dynamic batching: how long the first request of a batch waits for others"""
    max_texts: int = 256
    """texts per request, at most"""
    max_chars: int = 20000
    """characters per text, at most"""
    device: str = "cpu"
    """device of the models"""
    backbone: str | None = None
    """base backbone of the task modules (none: the one they were trained on)"""
    precision: str = "fp32"
    """fp32, bf16, int8 (dynamic quantisation of the linear layers; CPU) or auto (fp32 or bf16, whichever is
    faster here)"""
    early_exit: bool = False
    """early-exit classifiers (full models and task modules, in mixed batches too) leave at the first layer whose
    saved exit rule fires"""
    max_length: int | None = None
    """read up to this many tokens of each text, in every task (none: each task's training length; README: Reading
    more of each text at prediction)"""
    compile: bool = False
    """run the encoders through torch.compile: it compiles at start-up and when a task is added (a warm-up
    prediction per task; tens of seconds on a small CPU), so requests do not wait for it; early-exit batches run
    eagerly"""

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_texts", "max_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be 1 or more")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port={self.port!r}: must be 0 to 65535 (0: any free port)")
        if self.max_length is not None:
            from ..backbone import check_prediction_length
            check_prediction_length(self.max_length)
        if self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms={self.max_wait_ms!r}: must be 0 or more")


def create_app(root: str, cfg: ServeConfig | None = None, host: ModelHost | None = None) -> Any:
    """The ASGI app serving every classifier under ``root`` (loaded at start-up)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException

    cfg = cfg or ServeConfig()
    host = host or ModelHost(root, cfg.device, cfg.backbone, cfg.precision, cfg.early_exit, cfg.compile,
                             cfg.max_length)
    metrics = Metrics()
    batcher = Batcher(host, metrics, cfg.max_batch, cfg.max_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not host.info:
            await batcher.run(host.load_all)  # in the model thread, like every later model call
            if host.compile:
                print(f"compiled for {len(host.info)} task(s) in {host.warm_seconds:.0f} s", flush=True)
        await batcher.start()
        yield
        await batcher.stop()  # graceful: requests already queued are answered

    app = FastAPI(title="tailtune", lifespan=lifespan)
    app.state.host, app.state.batcher, app.state.metrics = host, batcher, metrics

    def error(status: int, message: str, kind: str) -> JSONResponse:
        metrics.error(kind)
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return error(422, f"invalid request body{' at ' + where if where else ''}: {first.get('msg', 'unreadable')}; "
                          f"send JSON like {{\"texts\": [\"a text\"]}}", "invalid")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), "http")

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Any:
        if cfg.token and (request.url.path.startswith("/v1") or request.url.path == "/metrics"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {cfg.token}".encode()):
                return error(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'", "auth")
        return await call_next(request)

    async def body(request: Request) -> dict:
        try:
            data = await request.json()
        except ValueError:
            raise HTTPException(400, "the body is not JSON; send {\"texts\": [\"a text\", ...]}") from None
        if not isinstance(data, dict):
            raise HTTPException(422, "send a JSON object: {\"texts\": [\"a text\", ...]}")
        return data

    @app.post("/v1/{task}/predict")
    async def predict(task: str, request: Request) -> Any:
        start = time.perf_counter()
        data = await body(request)
        texts, texts_b = data.get("texts"), data.get("texts_b")
        unknown = sorted(set(data) - {"texts", "texts_b"})
        if unknown:
            return error(422, f"unknown field(s) {unknown}; send texts (and texts_b for text pairs)", "invalid")
        if task not in host.info:
            return error(404, f"unknown task {task!r}; served: {', '.join(sorted(host.info)) or 'none'}", "unknown_task")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return error(422, "texts must be a non-empty list of strings", "invalid")
        if texts_b is not None and (not isinstance(texts_b, list) or len(texts_b) != len(texts)
                                    or not all(isinstance(t, str) for t in texts_b)):
            return error(422, "texts_b must be a list of strings as long as texts", "invalid")
        if len(texts) > cfg.max_texts:
            return error(413, f"{len(texts)} texts in one request; the limit is {cfg.max_texts}: split the request",
                         "too_many")
        long = next((i for i, t in enumerate(texts + (texts_b or [])) if len(t) > cfg.max_chars), None)
        if long is not None:
            return error(413, f"text {long % len(texts)} has more than {cfg.max_chars} characters; shorten it", "too_long")
        try:
            probs = await batcher.predict(task, texts, texts_b)
        except TailtuneError as e:
            metrics.observe(task, 400, time.perf_counter() - start)
            return error(400, str(e), "model")
        labels = host.labels(task)
        predictions = []
        for p in probs:
            best = int(p.argmax())
            predictions.append({"label": labels[best], "score": float(p[best]),
                                "probabilities": {y: float(v) for y, v in zip(labels, p.tolist())}})
        metrics.observe(task, 200, time.perf_counter() - start, len(texts))
        said = [f"task {task!r} was trained on pairs of texts, but these come without texts_b, so each text is "
                f"classified alone"] if texts_b is None and host.info[task].get("text_pairs") else []
        return {"task": task, "predictions": predictions, **({"warnings": said} if said else {})}

    @app.get("/v1/tasks")
    async def tasks() -> Any:
        return {"tasks": [{k: v for k, v in info.items() if k != "path"} for info in host.info.values()]}

    @app.put("/v1/tasks/{task}")
    async def add(task: str) -> Any:
        try:
            info = await batcher.run(host.add, task)
        except (ConfigError, ArtefactError) as e:
            return error(404 if "not a saved" in str(e) else 409, str(e), "admin")
        return {k: v for k, v in info.items() if k != "path"}

    @app.delete("/v1/tasks/{task}")
    async def remove(task: str) -> Any:
        try:
            await batcher.run(host.remove, task)
        except ConfigError as e:
            return error(404, str(e), "admin")
        return {"removed": task}

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok", "tasks": len(host.info)}

    @app.get("/metrics")
    async def prometheus() -> Response:
        data, kind = metrics.render()
        return Response(data, media_type=kind)

    return app


def listen_socket(host: str, port: int) -> Any:
    """The socket the server will accept on, bound and listening now, or a message saying why it cannot be (a port
    in use, a host not of this machine). ``serve`` opens it before the classifiers load and hands this very socket to
    uvicorn, so no other process can take the port in between: a bound socket that does not listen yet would not
    stop another SO_REUSEADDR bind (uvicorn's own). Connections made while the classifiers load wait in the backlog
    and are answered once they have loaded."""
    import socket
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}): give --host an address of this "
                          f"machine (127.0.0.1 by default)") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a port in TIME_WAIT is free
        sock.bind((host, port))
        sock.listen(2048)  # uvicorn's default backlog
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}): pick a free port with --port N, "
                          f"or stop what holds this one") from None
    return sock


def serve(root: str, cfg: ServeConfig, log: Any = print) -> None:
    """Run the server until interrupted; SIGINT / SIGTERM finish the requests in flight first."""
    import uvicorn
    sock = listen_socket(cfg.host, cfg.port)  # before the classifiers load; held until the server stops
    try:
        app = create_app(root, cfg)
        host = app.state.host
        # load every classifier now, in the model thread, so that a classifier the options do not fit (e.g. a
        # --max-length past the backbone's positions, int8 with LoRA) is refused with its message before any
        # request is answered
        app.state.batcher.worker.submit(host.load_all).result()
        if host.compile:
            log(f"compiled for {len(host.info)} task(s) in {host.warm_seconds:.0f} s")
        where = f"http://{f'[{cfg.host}]' if ':' in cfg.host else cfg.host}:{sock.getsockname()[1]}"  # IPv6 in []
        log(f"serving {root} on {where} (POST {where}/v1/<task>/predict; GET {where}/v1/tasks)")
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=30))
        server.run(sockets=[sock])
        # uvicorn re-raises a SIGINT after its graceful shutdown, but inside asyncio.run, whose own SIGINT handler
        # only cancels the main task: when the task has already finished, the interrupt is lost and the command
        # would exit 0 (seen under load). An interrupted server ends as any interrupted command (exit 130).
        if signal.SIGINT in getattr(server, "_captured_signals", ()):
            raise KeyboardInterrupt
    finally:
        sock.close()
