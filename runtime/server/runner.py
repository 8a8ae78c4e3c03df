"""What one request runs on the worker thread: render, tokenize, generate, parse.

A chat: the messages under the model's template (tools offered unless tool_choice is "none"),
generated with the turn-end stops plus the client's, then split by `parse_output` into reasoning,
answer and tool calls (typed by the offered schemas). tool_choice "required" or a named function
starts the answer with the tool-call opener the template teaches (`<tool_call>\\n<function=`, plus
the name): directly when thinking is off, and after the reasoning when it is on (the reasoning
ends at `</think>`, then the opener follows in a second generation that reuses the cache).

`Job` is what the slot hands in: `started()` once the prompt is known to fit (a stream's headers
go out then, so a refusal before it is still a plain 4xx), `delta(d)` per streamed piece, and
`cancelled()` (the client went away, or the server is stopping), checked at every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from qwythos.runtime.server.backend import (
    MAX_NEW_TOKENS,
    TURN_END,
    Backend,
    ChatOutput,
    Outcome,
    parse_output,
)
from qwythos.runtime.server.schema import ChatRequest, CompletionRequest
from qwythos.runtime.server.stream_split import StreamSplit

#: The opener of a tool call in the Qwen3.5 chat format (the template's own instructions).
TOOL_CALL_OPENER = "<tool_call>\n<function="
THINK_CLOSE = "</think>"
ANSWER_AFTER_THINKING = "\n\n"


class Job(Protocol):
    streaming: bool

    def started(self) -> None: ...

    def delta(self, d: dict) -> None: ...

    def cancelled(self) -> bool: ...


class Cancelled(Exception):
    """The generation stopped because its job was cancelled."""


@dataclass
class Reply:
    """A finished reply: its text, the parsed parts (chat), OpenAI's finish reason, the counts."""

    text: str
    parsed: ChatOutput | None
    finish_reason: str  # stop | length | tool_calls
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    draft: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    tool_choice: str = "auto"


def _finish(o: Outcome) -> str:
    if o.finish == "interrupted":
        raise Cancelled
    return "length" if o.finish in ("length", "context") else "stop"


def _timings(outcomes: list[Outcome]) -> dict:
    """llama-server's `timings` (tok/s of the prompt and the generation, the draft counts)."""
    prefilled = sum(o.prompt_tokens - o.cached_tokens for o in outcomes)
    p_s = sum(o.prompt_seconds for o in outcomes)
    n = sum(o.completion_tokens for o in outcomes)
    g_s = sum(o.gen_seconds for o in outcomes)
    return {
        "cache_n": outcomes[0].cached_tokens,
        "prompt_n": prefilled,
        "prompt_ms": round(p_s * 1000, 3),
        "prompt_per_second": round(prefilled / p_s, 3) if p_s > 0 else 0.0,
        "predicted_n": n,
        "predicted_ms": round(g_s * 1000, 3),
        "predicted_per_second": round(n / g_s, 3) if g_s > 0 else 0.0,
        "draft_n": sum(o.draft.get("drafted", 0) for o in outcomes),
        "draft_n_accepted": sum(o.draft.get("accepted", 0) for o in outcomes),
    }


def _draft(outcomes: list[Outcome]) -> dict:
    """The draft statistics of the reply: the last generation's mode and choice, counts summed."""
    d = dict(outcomes[-1].draft)
    if len(outcomes) > 1:
        d["drafted"] = sum(o.draft.get("drafted", 0) for o in outcomes)
        d["accepted"] = sum(o.draft.get("accepted", 0) for o in outcomes)
        d["acceptance"] = round(d["accepted"] / d["drafted"], 4) if d["drafted"] else 0.0
    return d


def run_chat(backend: Backend, req: ChatRequest, job: Job) -> Reply:
    opt = req.options
    tools = req.tools if req.tool_choice != "none" else None
    rendered = backend.render(req.messages, tools, req.enable_thinking)
    forced = req.tool_choice in ("required", "function")
    opener = TOOL_CALL_OPENER + (f"{req.tool_name}>\n" if req.tool_name else "")
    stop = [*TURN_END, *opt.stop]
    split = StreamSplit(rendered.think_open) if job.streaming else None
    budget = MAX_NEW_TOKENS if opt.max_tokens is None else opt.max_tokens

    def on_text(piece: str) -> None:
        for d in split.feed(piece):
            job.delta(d)

    def run(continuation: str, max_tokens: int, stops: list[str]) -> Outcome:
        with backend.prepare(rendered, req.images, continuation) as p:
            job.started()
            return backend.generate(
                p,
                sampling=opt.sampling,
                max_tokens=max_tokens,
                stop=stops,
                on_text=on_text if split is not None else None,
                should_stop=job.cancelled,
            )

    think_first = forced and rendered.think_open
    first = "" if think_first or not forced else opener
    if split is not None and first:
        split.feed(first)
    # reasoning before a forced call ends at </think> (the client's stops apply to the call)
    o = run(first, budget, [*TURN_END, THINK_CLOSE] if think_first else stop)
    outcomes, text, forced_text = [o], first + o.text, first
    finish = _finish(o)
    if think_first and o.finish == "stop" and budget > o.completion_tokens:
        more = THINK_CLOSE + ANSWER_AFTER_THINKING + opener
        if split is not None:
            on_text(more)
        o = run(text + more, budget - o.completion_tokens, stop)
        outcomes.append(o)
        text, forced_text = text + more + o.text, forced_text + more
        finish = _finish(o)
    if split is not None:
        for d in split.flush():
            job.delta(d)
    parsed = parse_output(text, think_open=rendered.think_open, tools=tools)
    if tools is not None and parsed.tool_calls:
        finish = "tool_calls"
    return Reply(
        text,
        parsed,
        finish,
        outcomes[0].prompt_tokens,
        sum(x.completion_tokens for x in outcomes) + (backend.count(forced_text) if forced_text else 0),
        outcomes[0].cached_tokens,
        _draft(outcomes),
        _timings(outcomes),
        req.tool_choice,
    )


def run_completion(backend: Backend, req: CompletionRequest, job: Job) -> Reply:
    opt = req.options

    def on_text(piece: str) -> None:
        job.delta({"text": piece})

    with backend.prepare(req.prompt) as p:
        job.started()
        o = backend.generate(
            p,
            sampling=opt.sampling,
            max_tokens=opt.max_tokens,
            stop=opt.stop,
            on_text=on_text if job.streaming else None,
            should_stop=job.cancelled,
        )
    return Reply(
        o.text,
        None,
        _finish(o),
        o.prompt_tokens,
        o.completion_tokens,
        o.cached_tokens,
        _draft([o]),
        _timings([o]),
    )
