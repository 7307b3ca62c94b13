"""A small Language Server Protocol client over stdio, to test the schema with the real yaml-language-server.

Only what the editor tests need: initialize, didOpen, the diagnostics the server publishes,
completion and hover, each with a timeout, so a hung server fails a test instead of CI.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"yaml": {"validate": True, "hover": True, "completion": True, "format": {"enable": False},
                     "schemaStore": {"enable": False}, "maxItemsComputed": 5000}}


def find_server() -> list[str] | None:
    """The command that starts yaml-language-server, or None: $SKIPTRAIN_YAML_LS, CI's .ci/.node, then PATH."""
    if not shutil.which("node"):
        return None
    candidates = [os.environ.get("SKIPTRAIN_YAML_LS", ""),
                  str(ROOT / ".ci" / ".node" / "node_modules" / ".bin" / "yaml-language-server"),
                  shutil.which("yaml-language-server") or ""]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return [candidate, "--stdio"]
    return None


class LanguageServer:
    """One server process; requests are answered in order by a reader thread."""

    def __init__(self, command: list[str], root: Path, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, cwd=root)
        self.responses: dict[int, queue.Queue] = {}
        self.diagnostics: dict[str, queue.Queue] = {}
        self.lock = threading.Lock()
        self.next_id = 0
        self.versions: dict[str, int] = {}
        threading.Thread(target=self._read, daemon=True).start()
        self.request("initialize", {"processId": os.getpid(), "rootUri": root.as_uri(), "capabilities": {
            "workspace": {"configuration": True},
            "textDocument": {"completion": {"completionItem": {"snippetSupport": True,
                                                               "documentationFormat": ["markdown", "plaintext"]}},
                             "hover": {"contentFormat": ["markdown", "plaintext"]},
                             "publishDiagnostics": {}}}}, timeout=30)
        self.notify("initialized", {})
        self.notify("workspace/didChangeConfiguration", {"settings": SETTINGS})

    # -- framing ---------------------------------------------------------------------------
    def _send(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        with self.lock:
            self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            self.process.stdin.flush()

    def _read(self) -> None:
        stream = self.process.stdout
        while True:
            length = None
            while True:
                line = stream.readline()
                if not line:
                    return
                if not line.strip():
                    break
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            if length is None:
                continue
            self._dispatch(json.loads(stream.read(length)))

    def _dispatch(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        if method is None:  # a response to one of our requests
            self._queue(self.responses, message["id"]).put(message)
        elif "id" in message:  # the server asks us: settings, capability registration
            result = [SETTINGS["yaml"]] * len(message["params"]["items"]) if method == "workspace/configuration" else None
            self._send({"id": message["id"], "result": result})
        elif method == "textDocument/publishDiagnostics":
            self._queue(self.diagnostics, message["params"]["uri"]).put(message["params"])

    def _queue(self, table: dict, key: Any) -> queue.Queue:
        with self.lock:
            return table.setdefault(key, queue.Queue())

    # -- protocol ----------------------------------------------------------------------------
    def request(self, method: str, params: dict[str, Any], timeout: float | None = None) -> Any:
        with self.lock:
            self.next_id += 1
            ident = self.next_id
        self._send({"id": ident, "method": method, "params": params})
        try:
            reply = self._queue(self.responses, ident).get(timeout=timeout or self.timeout)
        except queue.Empty:
            raise TimeoutError(f"yaml-language-server did not answer {method} in {timeout or self.timeout} s") from None
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result")

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self._send({"method": method, "params": params})

    def open(self, path: Path, text: str | None = None) -> str:
        """Open (or reopen with new text) a document; its uri."""
        uri = path.resolve().as_uri()
        text = path.read_text() if text is None else text
        version = self.versions.get(uri, 0) + 1
        self.versions[uri] = version
        if version == 1:
            self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "yaml",
                                                                  "version": version, "text": text}})
        else:
            self.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                                   "contentChanges": [{"text": text}]})
        return uri

    def diagnose(self, path: Path, text: str | None = None) -> list[dict[str, Any]]:
        """The diagnostics the server publishes for this text (the first set for its version)."""
        return self.diagnose_all([(path, text)])[0]

    def diagnose_all(self, documents: list[tuple[Path, str | None]]) -> list[list[dict[str, Any]]]:
        """Each document's diagnostics: all opened first, so the server's 200 ms validation delays overlap."""
        opened = []
        for path, text in documents:
            pending = self._queue(self.diagnostics, path.resolve().as_uri())
            while not pending.empty():  # an earlier text's diagnostics
                pending.get_nowait()
            uri = self.open(path, text)
            opened.append((path, pending, self.versions[uri]))
        results = []
        for path, pending, version in opened:
            while True:
                try:
                    params = pending.get(timeout=self.timeout)
                except queue.Empty:
                    raise TimeoutError(f"no diagnostics for {path.name} in {self.timeout} s") from None
                if params.get("version") in (None, version):
                    results.append(params["diagnostics"])
                    break
        return results

    def completion(self, uri: str, line: int, character: int) -> list[dict[str, Any]]:
        result = self.request("textDocument/completion", {"textDocument": {"uri": uri},
                                                          "position": {"line": line, "character": character}})
        return (result or {}).get("items", []) if isinstance(result, dict) else (result or [])

    def hover(self, uri: str, line: int, character: int) -> str:
        result = self.request("textDocument/hover", {"textDocument": {"uri": uri},
                                                     "position": {"line": line, "character": character}})
        contents = (result or {}).get("contents", "")
        return contents.get("value", "") if isinstance(contents, dict) else str(contents)

    def close(self) -> None:
        try:
            self.request("shutdown", {}, timeout=5)
            self.notify("exit", {})
            self.process.wait(timeout=5)
        except (TimeoutError, RuntimeError, OSError, subprocess.TimeoutExpired):  # a hung or dead server
            self.process.kill()
            self.process.wait()
