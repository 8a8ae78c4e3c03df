"""The adapter between the server and the runtime: the only module that calls load_model, Engine,
ChatSession and Vision, renders prompts and tokenizes them. Everything else in the server sees
`Backend`, `Rendered`, `Prepared` and `Outcome`, so a change of the runtime's API is a change here.

Runtime calls made here (and nowhere else in runtime/server):
- core.llamacpp.handles.load_model(path, mtp=, n_gpu_layers=); Model.tokenize(text),
  .info.chat_template, .n_vocab, .path, .close()
- core.gguf.mmproj.choose_mmproj(model_path, mmproj) -> .path; runtime.vision.Vision(model, path,
  threads=), .tokenize(text, paths) -> Layout (.n_tokens), .marker, .free_layout(layout), .close()
- runtime.draft_plan.draft_plan(model, draft, threads=) -> DraftPlan (.mode, .max_draft, .reason);
  runtime.speculative.Engine(model, plan, n_ctx=, threads=, vision=), .n_ctx, .plan, .close()
- runtime.session.ChatSession(engine), .generate(tokens | layout, max_tokens=, sampling=, stop=,
  on_text=) -> Generation (.text, .finish_reason, .stats: prompt_tokens, prefilled_tokens,
  gen_tokens, prompt_seconds, gen_seconds, draft_mode, draft, auto, drafted, accepted, acceptance,
  acceptance_per_depth, tokens_per_pass), .reset()
- runtime.sampling.SamplingParams(**fields) (its defaults are the model card's)
- core.llamacpp.prompt_tokens.render_for(model, messages, tools=, enable_thinking=, image_text=) ->
  core.model.chat_template.Prompt (+ text, .replace); tokenize_prompt(model, prompt) -> .tokens
- core.llamacpp.interrupt.request() (stops a decode in flight at its next graph node)
- re-exported for the rest of the server: runtime.chat.parse_output / ThinkStream / ChatOutput /
  _partial_suffix (as partial_suffix), TURN_END, IMAGE_PLACEHOLDER, MAX_IMAGE_BYTES, release.MAX_NEW_TOKENS

Stopping: the Engine ends a generation as "interrupted" when a KeyboardInterrupt comes out of a
decode (the abort flag) or out of `on_text`; `generate` turns a `should_stop()` that says yes
into exactly that, checked at every piece of text the engine emits (each step).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwythos.core.errors import QwythosError
from qwythos.core.llamacpp import interrupt
from qwythos.core.llamacpp.prompt_tokens import render_for, tokenize_prompt
from qwythos.core.model.chat_template import TURN_END, Prompt  # noqa: F401 - TURN_END re-exported
from qwythos.core.model.release import MAX_NEW_TOKENS, START_CONTEXT
from qwythos.runtime.chat import ChatOutput, ThinkStream, parse_output  # noqa: F401 - re-exported
from qwythos.runtime.chat import _partial_suffix as partial_suffix  # noqa: F401 - re-exported
from qwythos.runtime.server.errors import APIError, bad_request
from qwythos.runtime.vision import IMAGE_PLACEHOLDER, MAX_IMAGE_BYTES  # noqa: F401 - re-exported

AUTO = "auto"


def parse_draft(text: str | None) -> int | str:
    """--draft: "auto" (or nothing) or a number of drafts per step."""
    if text is None or text.strip().lower() == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise QwythosError(
            f"--draft {text!r} is not a number", "use auto or a number of drafts (0: plain)"
        ) from None


@dataclass
class BackendOptions:
    """What `qwythos serve` loads: the model, its drafting, placement, context and projector."""

    model: Path
    draft: int | str = AUTO
    no_mtp: bool = False
    gpu_layers: int | str | None = None  # None: auto (core/llamacpp/placement.py)
    n_ctx: int | None = None  # None: START_CONTEXT, or the model's trained context when smaller
    mmproj: Path | None = None
    threads: int | None = None
    alias: str | None = None


@dataclass
class Rendered:
    """A chat rendered by the model's template; think_open: it ends inside `<think>`."""

    prompt: Prompt
    think_open: bool


@dataclass
class Prepared:
    """A prompt ready to generate: tokens (or a vision Layout) and the KV cells it fills."""

    prompt: Any
    n_tokens: int
    layout: Any = None


@dataclass
class Outcome:
    """One generation, as the server reports it."""

    text: str
    finish: str  # eos | stop | length | context | interrupted
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    prompt_seconds: float
    gen_seconds: float
    draft: dict = field(default_factory=dict)


def _draft_stats(s) -> dict:  # noqa: ANN001 - a runtime GenStats
    auto = s.auto or {}
    return {
        "mode": s.draft_mode,
        "max": s.draft,
        "chosen": auto.get("final_choice") if s.draft_mode == "auto" else s.draft,
        "reason": auto.get("reason"),
        "drafted": s.drafted,
        "accepted": s.accepted,
        "acceptance": round(s.acceptance, 4),
        "acceptance_per_depth": [round(a, 4) for a in s.acceptance_per_depth],
        "tokens_per_pass": round(s.tokens_per_pass, 4),
    }


class Backend:
    """One model, its engine, an optional projector and the chat session that reuses the cache."""

    def __init__(self, model, engine, session, vision, name: str, projector: Path | None) -> None:  # noqa: ANN001
        self.model = model
        self.engine = engine
        self.session = session
        self.vision = vision
        self.name = name
        self.projector = projector

    @classmethod
    def open(cls, opts: BackendOptions) -> Backend:
        from qwythos.core.gguf.mmproj import choose_mmproj
        from qwythos.core.limits import check_threads
        from qwythos.core.llamacpp.handles import load_model
        from qwythos.core.llamacpp.placement import may_offload
        from qwythos.core.model.memory import check_context
        from qwythos.runtime.draft_plan import draft_plan
        from qwythos.runtime.session import ChatSession
        from qwythos.runtime.speculative import Engine

        draft = 0 if opts.no_mtp else opts.draft
        if opts.no_mtp and opts.draft != AUTO:
            raise QwythosError("--draft and --no-mtp contradict each other", "pass one of them")
        if opts.n_ctx is not None and opts.n_ctx < 16:
            raise QwythosError(f"--ctx {opts.n_ctx} is too small", f"e.g. --ctx {START_CONTEXT}")
        check_threads(opts.threads)
        projector = choose_mmproj(opts.model, opts.mmproj)
        # before allocating: against the trained context and, with the layers here, this machine's memory
        n_ctx = check_context(opts.model, opts.n_ctx, offloaded=may_offload(opts.gpu_layers)).ctx
        insist = isinstance(draft, int) and draft > 0
        model = load_model(
            opts.model,
            mtp=False if opts.no_mtp else (True if insist else None),
            n_gpu_layers=opts.gpu_layers,
            n_ctx=n_ctx,
        )
        vision = engine = None
        try:
            if projector is not None:
                from qwythos.runtime.vision import Vision

                vision = Vision(model, projector.path, threads=opts.threads)
            plan = draft_plan(model, draft, threads=opts.threads)
            engine = Engine(model, plan, n_ctx=n_ctx, threads=opts.threads, vision=vision)
            session = ChatSession(engine)
        except BaseException:
            if engine is not None:
                engine.close()
            if vision is not None:
                vision.close()
            model.close()
            raise
        name = opts.alias or opts.model.name.removesuffix(".gguf")
        return cls(model, engine, session, vision, name, projector.path if projector else None)

    # -- what the server tells clients -------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        """The names a request's `model` may use: the alias first, then the file's name and stem."""
        p = self.model.path
        return tuple(dict.fromkeys((self.name, p.name, p.name.removesuffix(".gguf"))))

    @property
    def n_ctx(self) -> int:
        return self.engine.n_ctx

    @property
    def n_vocab(self) -> int:
        return self.model.n_vocab

    @property
    def image_placeholder(self) -> str | None:
        """The text an image part becomes in a message (None: no projector, images refused)."""
        return IMAGE_PLACEHOLDER if self.vision is not None else None

    def describe(self) -> dict:
        e = self.engine
        plan = e.plan
        draft = {"plain": "plain decoding", "fixed": f"MTP draft {plan.max_draft}", "auto": "MTP draft auto"}
        return {
            "file": str(self.model.path),
            "n_ctx": e.n_ctx,
            "draft": draft.get(plan.mode, plan.mode) + (f" ({plan.reason})" if plan.reason else ""),
            "mmproj": str(self.projector) if self.projector else None,
        }

    # -- prompts ---------------------------------------------------------------------------------
    def render(self, messages: list[dict], tools: list[dict] | None, enable_thinking: bool) -> Rendered:
        """The chat under the model's own template (bounded; user text's special tokens protected)."""
        try:
            prompt = render_for(
                self.model,
                messages,
                tools=tools,
                enable_thinking=enable_thinking,
                image_text=self.image_placeholder,
            )
        except QwythosError as e:
            raise bad_request(e.message, "messages", "template_error") from None
        return Rendered(prompt, prompt.text.rstrip().endswith("<think>"))

    def count(self, text: str) -> int:
        """Tokens of text the model itself wrote (special tokens parsed)."""
        return len(self.model.tokenize(text))

    @contextmanager
    def prepare(
        self, prompt: Rendered | str | list[int], images: list[bytes] = (), continuation: str = ""
    ) -> Iterator[Prepared]:
        """A prompt ready for `generate`: a rendered chat (+ `continuation`, text the model itself
        wrote) with its pictures, a raw text or token ids. Refuses a prompt the context cannot hold."""
        if isinstance(prompt, list):
            yield self._fits(Prepared(prompt, len(prompt)))
            return
        # The one tokenization of a rendered chat: the messages' special-token texts stay text
        # (core/llamacpp/prompt_tokens); a raw completion prompt and the continuation are template text.
        text = (prompt.prompt if isinstance(prompt, Rendered) else Prompt(prompt)) + continuation
        if not images:
            tokens = tokenize_prompt(self.model, text).tokens
            yield self._fits(Prepared(tokens, len(tokens)))
            return
        with tempfile.TemporaryDirectory(prefix="qwythos-serve-") as tmp:
            paths = []
            for i, data in enumerate(images):
                paths.append(Path(tmp) / f"image-{i}")
                paths[-1].write_bytes(data)
            try:
                layout = self.vision.tokenize(text.replace(IMAGE_PLACEHOLDER, self.vision.marker), paths)
            except QwythosError as e:
                msg = e.message.replace(str(Path(tmp)) + "/", "")  # the client knows no temporary paths
                raise bad_request(msg, "messages", "invalid_image") from None
            try:
                yield self._fits(Prepared(layout, layout.n_tokens, layout))
            finally:
                self.vision.free_layout(layout)

    def _fits(self, p: Prepared) -> Prepared:
        if p.n_tokens == 0:
            raise bad_request("the prompt is empty", "prompt", "invalid_value")
        if p.n_tokens >= self.n_ctx:
            raise bad_request(
                f"the prompt has {p.n_tokens} tokens but the server's context holds {self.n_ctx} "
                "(shorten the conversation, or restart the server with a larger --ctx)",
                "messages",
                "context_length_exceeded",
            )
        return p

    # -- generation ------------------------------------------------------------------------------
    def generate(
        self,
        prepared: Prepared,
        *,
        sampling: dict[str, Any],
        max_tokens: int | None,
        stop: list[str],
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Outcome:
        """Generate after the prepared prompt, reusing the session's cache for its known prefix.
        `should_stop` is checked at each emitted piece of text; when it says yes the generation
        ends as "interrupted" (so does one whose decode `abort()` stopped)."""
        from qwythos.runtime.sampling import SamplingParams

        def text(piece: str) -> None:
            if should_stop():
                raise KeyboardInterrupt  # the engine's own stop: it returns what it has
            if on_text is not None:
                on_text(piece)

        try:
            sp = SamplingParams(**sampling)
        except TypeError as e:  # a field the schema let through that the sampler does not know
            raise APIError(500, f"sampling options: {e}") from None
        n = MAX_NEW_TOKENS if max_tokens is None else max_tokens
        try:
            gen = self.session.generate(prepared.prompt, max_tokens=n, sampling=sp, stop=stop, on_text=text)
        except QwythosError as e:
            self.session.reset()  # the contexts may hold a half-decoded prompt: start the next one fresh
            raise APIError(
                500, e.message + (f" ({e.hint})" if e.hint else ""), None, "generation_failed"
            ) from None
        except BaseException:
            self.session.reset()
            raise
        s = gen.stats
        return Outcome(
            gen.text,
            gen.finish_reason,
            s.prompt_tokens,
            s.prompt_tokens - s.prefilled_tokens,
            s.gen_tokens,
            s.prompt_seconds,
            s.gen_seconds,
            _draft_stats(s),
        )

    @staticmethod
    def abort() -> None:
        """Stop the decode in flight at its next graph node (only the one generation runs)."""
        interrupt.request()

    def close(self) -> None:
        vision = self.vision
        self.engine.close()
        if vision is not None:
            vision.close()
        self.model.close()
