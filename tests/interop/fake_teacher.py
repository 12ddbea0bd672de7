"""A local stand-in for a black-box teacher: one threaded HTTP server that speaks OpenAI's
chat-completions API (``POST /v1/chat/completions``) and a generic JSON probabilities API
(``POST /probabilities``), with scripted failures, delays and answers, and a record of
every call (for retry, backoff and concurrency checks)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def rule_label(text: str, labels: list[str]) -> str:
    """The fake teacher's deterministic answer: a label named in the text, else one picked by
    the text's character sum (so it often differs from what the student says)."""
    words = set(text.lower().split())
    named = [label for label in labels if label.lower() in words]
    return named[0] if named else labels[sum(map(ord, text)) % len(labels)]


@dataclass
class Call:
    path: str
    body: dict
    headers: dict
    started: float


@dataclass
class FakeTeacher:
    """What the server does next and what it saw. ``script`` holds, per upcoming call, an HTTP
    status to fail with, ``("sleep", seconds)``, or ``("answer", text)``; an empty script
    answers with ``rule_label`` after ``delay_s``."""

    url: str = ""
    delay_s: float = 0.0
    script: list = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.delay_s, self.script, self.calls, self.in_flight, self.max_in_flight = 0.0, [], [], 0, 0

    def _next(self):
        with self.lock:
            return self.script.pop(0) if self.script else None


def _handler(fake: FakeTeacher):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and left: what a timeout test wants

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            with fake.lock:
                fake.calls.append(Call(self.path, body, dict(self.headers), time.monotonic()))
                fake.in_flight += 1
                fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            try:
                self._answer(body)
            finally:
                with fake.lock:
                    fake.in_flight -= 1

        def _answer(self, body: dict) -> None:
            step = fake._next()
            time.sleep(fake.delay_s)
            if isinstance(step, int):
                self._send(step, {"error": {"message": f"scripted failure {step}", "type": "server_error"}})
                return
            if isinstance(step, tuple) and step[0] == "sleep":
                time.sleep(step[1])
            if self.path == "/probabilities":
                labels = body["labels"]
                rows = [[0.7 if label == rule_label(t, labels) else 0.3 / (len(labels) - 1) for label in labels] for t in body["texts"]]
                self._send(200, {"probabilities": rows})
                return
            system, text = body["messages"][0]["content"], body["messages"][1]["content"]
            labels = system.splitlines()[1:-1]  # the prompt lists one label a line between its first and last lines
            answer = step[1] if isinstance(step, tuple) and step[0] == "answer" else rule_label(text, labels)
            self._send(200, {
                "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            })

    return Handler


def start_fake_teacher() -> tuple[FakeTeacher, ThreadingHTTPServer]:
    """A running fake teacher on a free port, and its server (``shutdown()`` stops it)."""
    fake = FakeTeacher()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return fake, server
