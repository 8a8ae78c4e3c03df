"""A chat session: each turn reuses the contexts' cache for the prefix it shares with the last ones.

A new turn's rendered conversation usually starts with everything the previous turn's prompt held
(the Qwen3.5 template drops earlier turns' reasoning when it re-renders, so the reusable prefix
ends at the previous prompt rather than at the end of the previous reply). KV caches can be cut
anywhere, but the trunk's recurrent (DeltaNet) state only ever describes the latest position, so
the session keeps a checkpoint of it - like llama-server's context checkpoints - at the start of
the last turn of each prompt it prefills (just before its last `<|im_start|>`: what follows, the
generation prompt, is rendered differently once the reply is in). A turn restores the latest checkpoint whose tokens are a
prefix of the new prompt (recurrent state from the copy, KV caches truncated to it) and prefills
only the rest; without one it starts from scratch. Replies equal a fresh run on the same prompt
(up to the float noise of different batch boundaries, see speculative.py).

A prompt with pictures is a runtime/vision.Layout; the session then compares one key per position
(`Layout.keys()`: text tokens, an image as its file's digest), so a turn reuses the earlier turns'
images without encoding them again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qwythos.runtime.speculative import Engine, EngineCheckpoint, Generation
from qwythos.runtime.vision import Layout

#: Checkpoints kept (each holds the trunk's recurrent state: ~50 MiB at the 9B shapes).
MAX_CHECKPOINTS = 4


@dataclass
class _Saved:
    tokens: list  # the prompt prefix the checkpoint holds (one key per position)
    ck: EngineCheckpoint


class ChatSession:
    """Generation over one growing conversation on an Engine, prefilling only what is new."""

    def __init__(
        self, engine: Engine, max_checkpoints: int = MAX_CHECKPOINTS, turn_start: str = "<|im_start|>"
    ) -> None:
        self.engine = engine
        self.max_checkpoints = max(1, max_checkpoints)
        # one special token in Qwen's vocabulary; the tokens of its spelling in a vocabulary without it
        self.turn_start = engine.model.tokenize(turn_start) or None
        self._saved: list[_Saved] = []

    def checkpoint_position(self, prompt: list) -> int:
        """Where this prompt's checkpoint goes: before its last turn start (else its last token)."""
        mark = self.turn_start
        if mark:
            k = len(mark)
            for i in range(len(prompt) - k, 0, -1):
                if prompt[i] == mark[0] and prompt[i : i + k] == mark:
                    return i
        return len(prompt) - 1

    def _reusable(self, prompt: list) -> _Saved | None:
        """The longest checkpoint whose tokens start the prompt (with at least one token left)."""
        best = None
        for s in self._saved:
            n = len(s.tokens)
            if n < len(prompt) and prompt[:n] == s.tokens and (best is None or n > len(best.tokens)):
                best = s
        return best

    def generate(self, prompt_tokens: Sequence[int] | Layout, **kwargs) -> Generation:
        """Engine.generate for the whole rendered conversation (tokens, or a Layout with images);
        stats.prefilled_tokens says how much of it was actually decoded this turn."""
        layout = prompt_tokens if isinstance(prompt_tokens, Layout) else None
        prompt = layout.keys() if layout is not None else [int(t) for t in prompt_tokens]
        hit = self._reusable(prompt) if prompt else None
        keep = 0
        if hit is not None:
            self.engine.restore(hit.ck)
            keep = len(hit.tokens)
        # the contexts diverge from older checkpoints past `keep`: those are no longer valid
        self._saved = [s for s in self._saved if len(s.tokens) <= keep]

        def mark() -> None:
            n = self.engine.target.n_past
            if n == 0:
                return
            self._saved = [s for s in self._saved if len(s.tokens) != n]
            self._saved.append(_Saved(prompt[:n], self.engine.checkpoint()))
            del self._saved[: -self.max_checkpoints]

        at = max(keep, self.checkpoint_position(prompt))
        return self.engine.generate(
            layout if layout is not None else prompt, keep=keep, mark=(at, mark), **kwargs
        )

    def reset(self) -> None:
        """Forget every checkpoint (the next turn prefills from scratch)."""
        self._saved = []
