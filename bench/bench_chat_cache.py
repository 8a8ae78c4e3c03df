"""Chat time-to-first-token per turn: a fresh prefill of the whole conversation against a session
that reuses its cache (runtime/session.py), over a 5-turn conversation rendered with the chat
template. Prints, per turn: prompt tokens, tokens prefilled, time to first token (prefill + first
token), median of --reps, and checks that both replies are the same (greedy).

    nice -n 10 python bench/bench_chat_cache.py --threads 2                  # trained tiny model
    nice -n 10 python bench/bench_chat_cache.py --model X.gguf --threads 2 --max-tokens 24 --reps 3
"""

from __future__ import annotations

import statistics
import time

from engine_setup import bench_args, model_file

TURNS = (
    "Write a Python function that checks whether a number is prime.",
    "Now make it faster for large inputs.",
    "Add type hints and a docstring.",
    "Write three pytest tests for it.",
    "Explain the complexity of the final version in two sentences.",
)


def conversation(
    model, engine_factory, use_session: bool, max_tokens: int
) -> list[tuple[int, int, float, list]]:
    """(prompt tokens, prefilled tokens, seconds to first token, reply tokens) per turn."""
    from qwythos.runtime.chat import TURN_END, render_chat
    from qwythos.runtime.session import ChatSession

    out = []
    msgs: list[dict] = []
    with engine_factory() as eng:
        session = ChatSession(eng) if use_session else None
        first: dict = {}
        for user in TURNS:
            msgs.append({"role": "user", "content": user})
            toks = model.tokenize(render_chat(model.info.chat_template, msgs))
            first.clear()
            t0 = time.perf_counter()

            def on_text(piece: str, first=first, t0=t0) -> None:
                first.setdefault("t", time.perf_counter() - t0)

            gen = (session.generate if session else eng.generate)(
                toks, max_tokens=max_tokens, stop=list(TURN_END), on_text=on_text
            )
            ttft = first.get("t", gen.stats.prompt_seconds)
            out.append((len(toks), gen.stats.prefilled_tokens, ttft, gen.tokens))
            msgs.append({"role": "assistant", "content": gen.text, "reasoning_content": "(thinking)"})
    return out


def main() -> None:
    from qwythos.core.llamacpp.handles import load_model
    from qwythos.runtime.draft_plan import draft_plan, parse_draft
    from qwythos.runtime.speculative import Engine

    ap = bench_args(__doc__, max_tokens=48, reps=3)
    ap.add_argument("--draft", default="auto")
    a = ap.parse_args()
    draft = parse_draft(a.draft)
    with model_file(a.model) as path, load_model(path) as m:

        def factory():
            return Engine(m, draft_plan(m, draft, threads=a.threads), n_ctx=8192, threads=a.threads)

        fresh = [conversation(m, factory, False, a.max_tokens) for _ in range(a.reps)]
        cached = [conversation(m, factory, True, a.max_tokens) for _ in range(a.reps)]
    print(
        f"{path.name}, {a.threads} threads, draft {a.draft}, {a.max_tokens} tokens a reply, median of {a.reps}"
    )
    print(
        f"{'turn':>4} {'prompt':>6} {'prefilled':>9} {'TTFT fresh s':>12} {'TTFT cached s':>13} {'same reply':>10}"
    )
    for t in range(len(TURNS)):
        f = statistics.median(r[t][2] for r in fresh)
        c = statistics.median(r[t][2] for r in cached)
        same = fresh[0][t][3] == cached[0][t][3]
        print(
            f"{t + 1:4d} {fresh[0][t][0]:6d} {cached[0][t][1]:9d} {f:12.3f} {c:13.3f} {'yes' if same else 'NO':>10}"
        )


if __name__ == "__main__":
    main()
