"""`tinyscale serve`: an OpenAI-compatible HTTP server for trained models (see docs/serve.md).

    engine.py    dynamic batching on the model with one shared KV cache (a thread per model)
    app.py       FastAPI routes in the OpenAI formats, API key and body-size guard, error bodies
    choices.py   stop strings, streamed text and the log-probability layouts
    schemas.py   request bodies (which are also the OpenAPI schema)
    loading.py   run folders and `tinyscale export` folders
"""

from __future__ import annotations

import copy
import os
import socket

from tinyscale import progress
from tinyscale.errors import UserError

MAX_BODY_BYTES = 4 * 1024 * 1024
DRAIN_TIMEOUT_S = 120  # SIGTERM waits this long at most for running requests


def _check_port(host: str, port: int) -> None:
    """Fail with one line before loading models if the address is taken (uvicorn would exit later)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None


def _api_key(env_var: str | None) -> str | None:
    if env_var is None:
        return None
    key = os.environ.get(env_var, "")
    if not key:
        raise UserError(f"--api-key-env: environment variable {env_var} is not set or empty")
    return key


def _logging_to_stderr(uvicorn) -> dict:
    """uvicorn's logging, with its access lines on stderr (it prints them on stdout) like every log
    of tinyscale: a server has no product for stdout, and a wrapper piping it must not get logs."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    return config


def serve(paths: list[str], *, names: list[str] | None = None, host: str = "127.0.0.1", port: int = 8000,
          api_key_env: str | None = None, checkpoint: int | None = None, max_batch: int = 32,
          max_queue: int = 128, dtype: str = "fp32", device: str = "auto", threads: int | None = None,
          quiet: bool = False) -> None:
    """Serve the models in `paths` (run folders or exported folders) until SIGTERM or Ctrl-C."""
    try:
        import uvicorn

        from tinyscale.serve.app import Backend, DrainingServer, create_app
    except ImportError as e:
        raise UserError(f"serve: needs fastapi and uvicorn (pip install 'tinyscale[serve]'): {e}") from None
    from tinyscale.generate import eot_id_of, pick_device, resolve_dtype
    from tinyscale.serve.choices import TokenDecoder
    from tinyscale.serve.engine import Engine
    from tinyscale.serve.loading import load_served

    if names and len(names) != len(paths):
        raise UserError(f"--name: given {len(names)} times for {len(paths)} folders (give one per folder or none)")
    if max_batch < 1 or max_queue < 1:
        raise UserError("--max-batch and --max-queue must be positive")
    key = _api_key(api_key_env)
    _check_port(host, port)
    import torch

    dev = pick_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    # One dtype whatever the batch, so answers do not depend on load. fp32 unless asked: bf16 moves echoed
    # log-probabilities by up to 0.2 nats and changes greedy text (issue 28), which a user sees.
    dt = resolve_dtype(dtype, dev, max_batch)
    dtype_name = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dt]
    backends: dict[str, Backend] = {}
    for i, path in enumerate(paths):
        served = load_served(path, names[i] if names else None, checkpoint, dev)
        if served.name in backends:
            raise UserError(f"{path}: the model name '{served.name}' is already used (give --name)")
        engine = Engine(served.model, max_batch, max_queue, dt)
        backends[served.name] = Backend(served, engine, TokenDecoder(served.tokenizer), eot_id_of(served.tokenizer),
                                        dtype_name)
        per_token, most = engine.cache_bytes()
        progress.info(f"model '{served.name}': {served.source}, context {engine.context}, {dtype_name}, {dev}; "
                      f"KV cache {per_token / 1024:,.1f} KB a token of each running sequence, at most "
                      f"{most / 2**20:,.0f} MB (--max-batch {max_batch} x {engine.context})")
    if key is not None:
        progress.info(f"API key required (read from ${api_key_env})")
    app = create_app(backends, key, MAX_BODY_BYTES)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning" if quiet else "info",
                            timeout_graceful_shutdown=DRAIN_TIMEOUT_S, server_header=False,
                            log_config=_logging_to_stderr(uvicorn))
    try:
        DrainingServer(config).run()
    finally:
        for b in backends.values():
            b.engine.close()

