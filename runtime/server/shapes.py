"""Replies in OpenAI's JSON shapes: chat completions and their stream chunks, text completions,
usage (with `prompt_tokens_details.cached_tokens`: the prompt tokens the session cache served,
and `draft`: the MTP statistics), llama-server's `timings`, the model list, Server-Sent Events."""

from __future__ import annotations

import json
import secrets
import time

from qwythos.runtime.server.runner import Reply

SSE_DONE = b"data: [DONE]\n\n"
OWNER = "qwythos"


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def merge_deltas(deltas: list[dict]) -> list[dict]:
    """Consecutive one-field deltas of the same field joined (fewer chunks, the same text)."""
    out: list[dict] = []
    for d in deltas:
        if out and len(d) == 1 and out[-1].keys() == d.keys():
            (k,) = d
            out[-1] = {k: out[-1][k] + d[k]}
        else:
            out.append(dict(d))
    return out


def usage(r: Reply) -> dict:
    return {
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "total_tokens": r.prompt_tokens + r.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": r.cached_tokens},
        "draft": r.draft,
    }


def tool_calls(r: Reply) -> list[dict]:
    """The reply's tool calls, arguments as JSON text (OpenAI's shape); none when tool_choice is none."""
    if r.parsed is None or r.tool_choice == "none":
        return []
    return [
        {
            "id": f"call_{secrets.token_hex(12)}",
            "type": "function",
            "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)},
        }
        for c in r.parsed.tool_calls
    ]


def chat_message(r: Reply) -> dict:
    calls = tool_calls(r)
    msg: dict = {"role": "assistant", "content": r.parsed.answer if (r.parsed.answer or not calls) else None}
    if r.parsed.reasoning:
        msg["reasoning_content"] = r.parsed.reasoning
    if calls:
        msg["tool_calls"] = calls
    return msg


def chat_completion(r: Reply, rid: str, created: int, model: str) -> dict:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "message": chat_message(r), "finish_reason": r.finish_reason, "logprobs": None}
        ],
        "usage": usage(r),
        "timings": r.timings,
    }


def chat_chunk(rid: str, created: int, model: str, delta: dict, finish: str | None = None) -> dict:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def chat_final_chunks(r: Reply, rid: str, created: int, model: str, include_usage: bool) -> list[dict]:
    """After the streamed text: the tool calls (one delta, whole), the finish reason with the
    timings, and with stream_options.include_usage the usage chunk (no choices)."""
    out = []
    calls = tool_calls(r)
    if calls:
        out.append(
            chat_chunk(rid, created, model, {"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]})
        )
    last = chat_chunk(rid, created, model, {}, r.finish_reason)
    last["timings"] = r.timings
    out.append(last)
    if include_usage:
        out.append({**chat_chunk(rid, created, model, {}), "choices": [], "usage": usage(r)})
    return out


def completion(r: Reply, rid: str, created: int, model: str) -> dict:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}],
        "usage": usage(r),
        "timings": r.timings,
    }


def completion_chunk(rid: str, created: int, model: str, text: str, finish: str | None = None) -> dict:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
    }


def completion_final_chunks(r: Reply, rid: str, created: int, model: str, include_usage: bool) -> list[dict]:
    last = completion_chunk(rid, created, model, "", r.finish_reason)
    last["timings"] = r.timings
    return [last, *([{**last, "choices": [], "usage": usage(r)}] if include_usage else [])]


def models(names: tuple[str, ...], created: int, meta: dict) -> dict:
    return {
        "object": "list",
        "data": [{"id": names[0], "object": "model", "created": created, "owned_by": OWNER, "meta": meta}],
    }
