"""A fake OpenAI-compatible chat server for tests: loopback only, scriptable, records what it gets.

Usage::

    with FakeOpenAI(reply=lambda body: "87") as server:
        server.script(Fault.http(429, retry_after=0.2), Fault.drop())
        backend = OpenAIBackend(OpenAIConfig(base_url=server.url, model="fake"))
        ...
        assert server.requests[-1].body["seed"] == ...

Faults queued with ``script`` are used up one per incoming chat request, in arrival order; once
the queue is empty every request gets a normal reply. A normal reply is ``reply(body)`` cut into
word-sized "tokens" (so ``max_tokens`` and ``stop`` behave like a real server), with per-position
top logprobs from ``logprobs(body, text)`` when the request asks for them.
"""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Reply = Callable[[dict], str]
Logprobs = Callable[[dict, str], list[dict[str, float]]]

_TOKEN = re.compile(r"\s*\S+")


@dataclass(frozen=True)
class Fault:
    """One misbehaviour to inject instead of (or, for ``slow``, before) a normal reply."""

    kind: Literal["http", "slow", "malformed", "body", "drop"]
    status: int = 500
    message: str = "injected fault"
    retry_after: float | None = None
    delay_s: float = 0.0
    payload: Any = None

    @classmethod
    def http(cls, status: int, message: str = "injected fault", retry_after: float | None = None) -> Fault:
        """An OpenAI-style JSON error with this status (and a Retry-After header if given)."""
        return cls("http", status=status, message=message, retry_after=retry_after)

    @classmethod
    def slow(cls, delay_s: float) -> Fault:
        """Wait ``delay_s`` before replying normally: longer than the client timeout means a timeout."""
        return cls("slow", delay_s=delay_s)

    @classmethod
    def malformed(cls) -> Fault:
        """HTTP 200 with a body that is not JSON."""
        return cls("malformed")

    @classmethod
    def body(cls, payload: Any) -> Fault:
        """HTTP 200 with this JSON instead of a completion (e.g. a gateway's error object)."""
        return cls("body", status=200, payload=payload)

    @classmethod
    def drop(cls) -> Fault:
        """Close the connection without sending any response."""
        return cls("drop")


@dataclass
class Received:
    """One request as the server saw it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


def echo(body: dict) -> str:
    """Default reply: 'echo: ' plus the last user message."""
    users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
    return f"echo: {users[-1] if users else ''}"


def word_logprobs(body: dict, text: str) -> list[dict[str, float]]:
    """Default logprobs: each emitted word is the favourite at -0.05, then made-up runners-up."""
    return [{tok: -0.05, **{f"<alt{j}>": -float(j) for j in range(1, 20)}} for tok in _TOKEN.findall(text)]


class FakeOpenAI:
    """A ThreadingHTTPServer on 127.0.0.1 serving /v1/chat/completions and /v1/models."""

    def __init__(self, reply: Reply = echo, logprobs: Logprobs = word_logprobs, *, delay_s: float = 0.0,
                 api_key: str | None = None, usage: bool = True, model_id: str = "fake-model"):
        self.reply = reply
        self.logprobs = logprobs
        self.delay_s = delay_s  # added to every normal reply, so concurrent requests overlap
        self.api_key = api_key  # when set, requests without "Bearer <api_key>" get HTTP 401
        self.usage = usage
        self.model_id = model_id
        self.requests: list[Received] = []
        self.peak_in_flight = 0
        self._faults: deque[Fault] = deque()
        self._in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def chat_requests(self) -> list[Received]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def script(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    def start(self) -> FakeOpenAI:
        self._stopping.clear()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()  # wakes handlers sleeping in a slow fault
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
        self._httpd = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- called from handler threads ------------------------------------------------------------

    def _remember(self, received: Received) -> None:
        with self._lock:
            self.requests.append(received)

    def _record(self, received: Received) -> Fault | None:
        """Remember a chat request, count it in flight and hand out the next scripted fault."""
        with self._lock:
            self.requests.append(received)
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
            return self._faults.popleft() if self._faults else None

    def _done(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _completion(self, body: dict) -> dict:
        tokens = _TOKEN.findall(self.reply(body))
        finish = "stop"
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and len(tokens) > max_tokens:
            tokens, finish = tokens[:max_tokens], "length"
        text = "".join(tokens)
        for stop in body.get("stop") or []:
            if stop in text:
                text, finish = text[:text.index(stop)], "stop"
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": finish, "logprobs": None}
        if body.get("logprobs"):
            k = int(body.get("top_logprobs") or 0)
            choice["logprobs"] = {"content": [_position(alts, k) for alts in self.logprobs(body, text)]}
        reply: dict[str, Any] = {"id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion",
                                 "created": 0, "model": body.get("model"), "choices": [choice]}
        if self.usage:
            prompt = "".join(str(m.get("content", "")) for m in body.get("messages", []))
            reply["usage"] = {"prompt_tokens": len(_TOKEN.findall(prompt)),
                              "completion_tokens": len(_TOKEN.findall(text)),
                              "total_tokens": len(_TOKEN.findall(prompt)) + len(_TOKEN.findall(text))}
        return reply


def _position(alternatives: dict[str, float], k: int) -> dict:
    """One entry of choices[0].logprobs.content: the favourite token plus its top-k alternatives."""
    ranked = sorted(alternatives.items(), key=lambda kv: kv[1], reverse=True)
    token, logprob = ranked[0]
    return {"token": token, "logprob": logprob, "bytes": list(token.encode()),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in ranked[:k]]}


def _error(status: int, message: str) -> dict:
    return {"error": {"message": message, "type": "fake_error", "code": status}}


def _handler_for(server: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like real servers
        disable_nagle_algorithm = True  # headers and body go out in two writes; don't stall the second

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            server._remember(Received("GET", self.path, _headers(self), None))
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": server.model_id, "object": "model"}]})
            else:
                self._send(404, _error(404, f"no route {self.path}"))

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                body = raw.decode(errors="replace")
            if self.path.rstrip("/") != "/v1/chat/completions":
                server._remember(Received("POST", self.path, _headers(self), body))
                self._send(404, _error(404, f"no route {self.path}"))
                return
            fault = server._record(Received("POST", self.path, _headers(self), body))
            try:
                self._chat(body, fault)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout) before we answered
            finally:
                server._done()

        def _chat(self, body: Any, fault: Fault | None) -> None:
            if fault is not None and fault.kind == "drop":
                self.close_connection = True
                return
            if fault is not None and fault.kind == "http":
                headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
                self._send(fault.status, _error(fault.status, fault.message), headers)
                return
            if fault is not None and fault.kind == "malformed":
                self._send_raw(200, b'{"choices": [{"message": ', "application/json")
                return
            if fault is not None and fault.kind == "body":
                self._send(200, fault.payload)
                return
            if server.api_key is not None and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                self._send(401, _error(401, "invalid or missing API key"))
                return
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or "model" not in body:
                self._send(400, _error(400, "request needs 'model' and a 'messages' list"))
                return
            server._sleep(server.delay_s + (fault.delay_s if fault is not None else 0.0))
            self._send(200, server._completion(body))

        def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            self._send_raw(status, json.dumps(payload).encode(), "application/json", headers)

        def _send_raw(self, status: int, data: bytes, content_type: str,
                      headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _headers(handler: BaseHTTPRequestHandler) -> dict[str, str]:
    return {k.lower(): v for k, v in handler.headers.items()}
