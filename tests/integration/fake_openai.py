"""A small HTTP server on loopback that speaks the OpenAI chat completions API.

It answers deterministically: with tools offered and no tool result yet in the conversation it asks
for the first tool, otherwise it answers with the last user message. It records every request, and
logs when each completion request came and the tokens its answer reported (``log``: what a rate
limit test checks its windows against). For the model ``leaky`` it refuses the request with a 400
that echoes the Authorization header back, as careless proxies do; ``busy(model, n, retry_after)``
makes it answer the next ``n`` requests for ``model`` with a 429 and that Retry-After.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROMPT_TOKENS, COMPLETION_TOKENS = 11, 7


class FakeOpenAI:
    def __init__(self):
        self.requests: list[dict] = []
        self.log: list[dict] = []  # {"at": time.time(), "model", "status", "tokens"} per completion request
        self.lock = threading.Lock()
        self.refusals: dict[str, tuple[int, str]] = {}  # model -> (429s still to answer, Retry-After)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if self.path != "/v1/chat/completions":
                    self.send_response(404)
                    self.end_headers()
                    return
                refused = server.refusal(body.get("model"))
                if refused is not None:
                    server.log.append({"at": time.time(), "model": body.get("model"), "status": 429, "tokens": 0})
                    self.send_response(429)
                    self.send_header("Retry-After", refused)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if body.get("model") == "leaky":
                    self.send_response(400)
                    self.end_headers()
                    self.wfile.write(f"bad request from {self.headers.get('Authorization')}".encode())
                    return
                server.log.append({"at": time.time(), "model": body.get("model"), "status": 200,
                                   "tokens": PROMPT_TOKENS + COMPLETION_TOKENS})
                reply = json.dumps(server.complete(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def busy(self, model: str, count: int, retry_after: str) -> None:
        """Answer the next ``count`` requests for ``model`` with 429 and ``Retry-After: retry_after``."""
        with self.lock:
            self.refusals[model] = (count, retry_after)

    def refusal(self, model: str | None) -> str | None:
        """The Retry-After to refuse this request with, if one is due (counted down)."""
        with self.lock:
            count, retry_after = self.refusals.get(model or "", (0, ""))
            if count <= 0:
                return None
            self.refusals[model] = (count - 1, retry_after)
            return retry_after

    def complete(self, body: dict) -> dict:
        messages = body["messages"]
        message: dict = {"role": "assistant", "content": None}
        if body.get("tools") and not any(m["role"] == "tool" for m in messages):
            tool = body["tools"][0]["function"]["name"]
            message["tool_calls"] = [{
                "id": "call_1", "type": "function",
                "function": {"name": tool, "arguments": json.dumps({"from": "fake-llm"})},
            }]
        else:
            last_user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
            message["content"] = f"fake answer to: {last_user}"
        return {
            "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS},
        }

    def start(self) -> None:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
