"""The load generator: streamed requests to an OpenAI-compatible server at a concurrency or a rate.

Each request is sent with ``stream: true`` so that the arrival of every chunk is timed: time to
first token, time per output token, and which tokens fell inside a measured window all come from
those times. Requests run on threads of this process (the standard library's HTTP client, no
event loop to share with the caller); their CPU time is the measurement's companion, never the
server's. A request that fails is recorded with why (HTTP status, timeout, connection, an error in
the stream), never dropped.
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

Api = Literal["completions", "chat"]
CONNECTION_BACKOFF_S = 0.05
# How a request asks for exactly ``max_tokens`` output tokens: servers differ, so it is probed.
LENGTH_DIALECTS: dict[str, Callable[[int], dict[str, Any]]] = {
    "vllm": lambda n: {"min_tokens": n, "ignore_eos": True},  # vLLM, SGLang
    "transformers": lambda n: {"generation_config": json.dumps({"min_new_tokens": n})},  # transformers serve
}


@dataclass(frozen=True)
class Prompt:
    text: str
    max_tokens: int
    reference: Any = None  # what the task scores the output against, when the data has it


@dataclass
class RequestRecord:
    """One request: when it was sent, when each chunk of text came, how it ended."""

    prompt_index: int
    sent_s: float  # time.perf_counter()
    chunk_times: list[float] = field(default_factory=list)  # arrival of each chunk that carried text
    done_s: float | None = None
    outcome: str = "ok"  # ok, http_<status>, timeout, connection, stream_error, bad_response
    output_tokens: int | None = None  # the server's usage figure; None when it gave none
    input_tokens: int | None = None
    text: str = ""
    detail: str = ""  # the error, when there was one

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def first_token_s(self) -> float | None:
        return self.chunk_times[0] if self.chunk_times else None

    @property
    def tokens(self) -> int:
        """Output tokens: the server's count, else one per chunk."""
        return self.output_tokens if self.output_tokens is not None else len(self.chunk_times)

    def tokens_between(self, start_s: float, end_s: float) -> float:
        """Output tokens that arrived in [start_s, end_s): chunks in it, scaled to the server's count."""
        if not self.chunk_times:
            return 0.0
        inside = sum(1 for t in self.chunk_times if start_s <= t < end_s)
        return inside * self.tokens / len(self.chunk_times)


class Client:
    """Sends one streamed request at a time per calling thread (a connection per request)."""

    def __init__(self, endpoint: str, model: str, *, api: Api = "completions", timeout_s: float = 120.0,
                 extra_body: dict[str, Any] | None = None) -> None:
        parts = urlsplit(endpoint)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.base = parts.path.rstrip("/")
        self.model = model
        self.api = api
        self.timeout_s = timeout_s
        self.extra_body = dict(extra_body or {})
        self.length_dialect: str | None = None

    def body(self, prompt: Prompt) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": prompt.max_tokens, "stream": True,
                                "stream_options": {"include_usage": True}, "temperature": 0.0}
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt.text}]
        else:
            body["prompt"] = prompt.text
        if self.length_dialect is not None:
            body.update(LENGTH_DIALECTS[self.length_dialect](prompt.max_tokens))
        body.update(self.extra_body)
        return body

    def send(self, prompt: Prompt, index: int = 0) -> RequestRecord:
        record = RequestRecord(index, time.perf_counter())
        path = f"{self.base}/v1/{'chat/completions' if self.api == 'chat' else 'completions'}"
        deadline = record.sent_s + self.timeout_s
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            connection.request("POST", path, body=json.dumps(self.body(prompt)),
                               headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
            response = connection.getresponse()
            if response.status != 200:
                record.outcome = f"http_{response.status}"
                record.detail = response.read(2000).decode(errors="replace")
                return record
            self._read_stream(response, record, deadline)
        except TimeoutError:
            record.outcome, record.detail = "timeout", f"no answer within {self.timeout_s:g} s"
        except (OSError, http.client.HTTPException) as err:
            record.outcome, record.detail = "connection", f"{type(err).__name__}: {err}"
        finally:
            connection.close()
            record.done_s = time.perf_counter()
        return record

    def _read_stream(self, response: http.client.HTTPResponse, record: RequestRecord, deadline: float) -> None:
        texts: list[str] = []
        finished = False
        for raw in response:
            if time.perf_counter() > deadline:
                record.outcome, record.detail = "timeout", f"not finished within {self.timeout_s:g} s"
                return
            line = raw.decode(errors="replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                finished = True
                break
            try:
                chunk = json.loads(data)
            except ValueError:
                record.outcome, record.detail = "bad_response", f"not JSON in the stream: {data[:200]}"
                return
            if "error" in chunk:
                record.outcome, record.detail = "stream_error", str(chunk["error"])[:2000]
                return
            text = _chunk_text(chunk)
            if text:
                record.chunk_times.append(time.perf_counter())
                texts.append(text)
            usage = chunk.get("usage")
            if usage:
                record.output_tokens = usage.get("completion_tokens")
                record.input_tokens = usage.get("prompt_tokens")
                finished = True  # the usage chunk is the last one; [DONE] may follow or not
            elif any(c.get("finish_reason") for c in chunk.get("choices") or []):
                finished = True
        record.text = "".join(texts)
        if not finished:
            record.outcome, record.detail = "connection", "the stream ended before the response was complete"


def _chunk_text(chunk: dict[str, Any]) -> str:
    parts = []
    for choice in chunk.get("choices") or []:
        if "text" in choice:
            parts.append(choice.get("text") or "")
        delta = choice.get("delta") or {}
        parts.append(delta.get("content") or "")
    return "".join(parts)


def choose_length_dialect(client: Client, prompt: Prompt, tokens: int = 8) -> str | None:
    """The way this server takes "generate exactly N tokens" (vLLM's ``min_tokens``/``ignore_eos``, or
    transformers serve's ``generation_config``), or None when it takes neither: then outputs end
    where the model stops, and their lengths are what the server reports."""
    probe = Prompt(prompt.text, tokens)
    for name in LENGTH_DIALECTS:
        client.length_dialect = name
        record = client.send(probe)
        if record.ok and record.tokens == tokens:
            return name
    client.length_dialect = None
    return None


@dataclass(frozen=True)
class Level:
    """A load level: a closed loop of ``concurrency`` users, or an open loop of ``rate`` requests/s."""

    concurrency: int | None = None
    rate: float | None = None

    @property
    def name(self) -> str:
        return f"concurrency {self.concurrency}" if self.concurrency is not None else f"rate {self.rate:g}/s"

    @property
    def slug(self) -> str:
        return f"c{self.concurrency}" if self.concurrency is not None else f"r{self.rate:g}"


class Load:
    """Requests sent at one level until ``stop``; every record kept, in the order requests ended."""

    def __init__(self, client: Client, prompts: Sequence[Prompt], level: Level, *, seed: int = 0,
                 max_in_flight: int = 1024) -> None:
        if not prompts:
            raise ValueError("no prompts to send")
        self.client = client
        self.prompts = prompts
        self.level = level
        self.records: list[RequestRecord] = []
        self.in_flight = 0
        self.refused_over_limit = 0  # open loop: arrivals dropped because max_in_flight were pending
        self._order = itertools.cycle(range(len(prompts)))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._changed = threading.Condition(self._lock)
        self._random = random.Random(seed)
        self._max_in_flight = max_in_flight
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if self.level.concurrency is not None:
            targets = [self._closed_loop_user] * self.level.concurrency
        else:
            targets = [self._open_loop_arrivals]
        for number, target in enumerate(targets):
            thread = threading.Thread(target=target, name=f"load-{self.level.slug}-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def finished_count(self) -> int:
        with self._lock:
            return len(self.records)

    def wait_finished(self, count: int, timeout_s: float) -> bool:
        """Wait until ``count`` requests have ended (any outcome), or ``timeout_s`` passed."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.records) >= count, timeout=timeout_s)

    def stop(self, drain_timeout_s: float) -> bool:
        """Send no more; wait for the requests in flight to end. False when some did not in time."""
        self._stop.set()
        with self._changed:
            return self._changed.wait_for(lambda: self.in_flight == 0, timeout=drain_timeout_s)

    def _next_prompt(self) -> int:
        with self._lock:
            return next(self._order)

    def _one(self, index: int) -> str:
        try:
            record = self.client.send(self.prompts[index], index)
        except Exception as err:  # a bug in the client must show as a failed request, not a hung level
            record = RequestRecord(index, time.perf_counter(), outcome="client_error", detail=repr(err))
            record.done_s = record.sent_s
        with self._changed:
            self.in_flight -= 1
            self.records.append(record)
            self._changed.notify_all()
        return record.outcome

    def _closed_loop_user(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self.in_flight += 1
            if self._one(self._next_prompt()) == "connection":
                self._stop.wait(CONNECTION_BACKOFF_S)  # a server that is gone is not hammered

    def _open_loop_arrivals(self) -> None:
        rate = float(self.level.rate or 1.0)
        while not self._stop.wait(self._random.expovariate(rate)):
            with self._lock:
                if self.in_flight >= self._max_in_flight:
                    self.refused_over_limit += 1
                    continue
                self.in_flight += 1
            threading.Thread(target=self._one, args=(self._next_prompt(),), daemon=True).start()
