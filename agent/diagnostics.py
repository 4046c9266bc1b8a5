"""The local diagnostics socket: a Unix stream socket speaking JSON lines. A request is one
line ``{"cmd": "status"}`` (or just ``status``); the answer is one JSON object line with
``ok`` and either ``result`` or ``error``. The ``acc`` CLI is the client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

__all__ = ["DiagnosticsServer", "DiagError", "default_socket_paths", "query"]

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Any | Awaitable[Any]]
MAX_REQUEST = 64 * 1024


class DiagError(Exception):
    """The diagnostics socket could not be reached or answered with an error."""


class DiagnosticsServer:
    def __init__(self, path: str | Path, mode: int = 0o660) -> None:
        self.path = Path(path)
        self.mode = mode
        self.handlers: dict[str, Handler] = {}
        self._server: asyncio.AbstractServer | None = None

    def command(self, name: str, handler: Handler) -> None:
        self.handlers[name] = handler

    async def serve(self) -> None:
        """Serve until cancelled; removes a stale socket file first, and its own at the end."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _alive(self.path):
                raise OSError(f"another agent is serving diagnostics on {self.path}")
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._client, path=str(self.path), limit=MAX_REQUEST)
        os.chmod(self.path, self.mode)
        log.info("diagnostics on %s", self.path)
        try:
            async with self._server:
                await self._server.serve_forever()
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(json.dumps(await self._answer(line), default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as err:
            log.debug("diagnostics client dropped: %s", err)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        text = line.decode("utf-8", "replace").strip()
        try:
            req = json.loads(text) if text.startswith("{") else {"cmd": text}
        except json.JSONDecodeError as err:
            return {"ok": False, "error": f"request is not JSON: {err}"}
        if not isinstance(req, dict):
            return {"ok": False, "error": "request must be a JSON object"}
        cmd = req.get("cmd")
        handler = self.handlers.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            return {
                "ok": False,
                "error": f"unknown command {cmd!r}; known: {', '.join(sorted(self.handlers))}",
            }
        try:
            result = handler(req)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                result = await result
        except Exception as err:  # noqa: BLE001 - a bad command must not take the server down
            log.warning("diagnostics command %s failed: %s", cmd, err, exc_info=err)
            return {"ok": False, "error": f"{type(err).__name__}: {err}"}
        return {"ok": True, "result": result}


def _alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


def default_socket_paths() -> list[Path]:
    """Where ``acc`` looks for the agent, in order."""
    paths = []
    if env := os.environ.get("ACC_DIAG_SOCKET"):
        paths.append(Path(env))
    if rt := os.environ.get("RUNTIME_DIRECTORY"):
        paths.append(Path(rt.split(":")[0]) / "diag.sock")
    paths += [Path("/run/autochain/diag.sock"), Path("/var/lib/autochain/diag.sock")]
    return paths


def query(path: str | Path, cmd: str, timeout: float = 3.0, **params: Any) -> Any:
    """Blocking client: send one command, return its ``result`` or raise ``DiagError``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            s.sendall(json.dumps({"cmd": cmd, **params}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except FileNotFoundError:
            raise DiagError(f"no agent socket at {path} (is acc-agent running?)") from None
        except PermissionError:
            raise DiagError(f"no permission to open {path} (run as root or in the autochain group)") from None
        except OSError as err:
            raise DiagError(f"cannot talk to the agent at {path}: {err}") from err
    try:
        answer = json.loads(buf)
    except json.JSONDecodeError as err:
        raise DiagError(f"the agent at {path} sent a malformed answer: {err}") from err
    if not answer.get("ok"):
        raise DiagError(f"the agent refused {cmd!r}: {answer.get('error')}")
    return answer.get("result")
