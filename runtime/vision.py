"""Images in a Qwen3.5 prompt, through llama.cpp's libmtmd (llama_cpp.mtmd_cpp, built in the wheel).

The pieces the engine needs to run a prompt with pictures, kept apart from the speculative loop:

- `Vision(model, mmproj)`: an mtmd context on the mmproj, bound to the loaded text model. The
  projector is checked first (a clip GGUF whose output width equals the model's embedding width),
  so a projector of another model is one message, not a C abort.
- `Vision.load_image(path)`: decoded by libmtmd (stb_image: PNG, JPEG, BMP, GIF, ...); a missing or
  unreadable file is one message.
- `Vision.tokenize(prompt, images)`: the Qwen3.5 chat format. The template
  renders an image as `<|vision_start|><|image_pad|><|vision_end|>`; libmtmd puts the vision
  start/end tokens around the image itself, so the triple becomes its media marker.
- `Vision.encode(segment)`: the image's embeddings (n_tokens x n_embd), llama.cpp's tower + merger.
- `Layout` / `Positions`: M-RoPE positions apart from KV cells. An image of nx x ny merged tokens
  fills nx*ny cells but advances the position by max(nx, ny) (every image token has t = pos0,
  x = pos0 + column, y = pos0 + row); text advances both by one per token. The room check is on
  cells, the next token's position is `Positions.pos`.
- `Vision.decode_image(ctx, segment, pos)`: one image into a target context at a position (what the
  speculative engine calls between its own text decodes, runtime/speculative.py).
- `Layout.keys()`: one key per position (text tokens, an image's file digest), what a chat session
  compares to reuse earlier turns' images; `Layout.cells_before(pos)`.
- `Vision.prefill(ctx, layout)`: decodes text and image chunks into a target context from the
  current position and returns where positions and cells stand, the last row's logits and, for
  the MTP head, the hidden state of the last row (the last image row when an image ends the
  prompt: llama.cpp's MTP graph cannot take (image embedding, hidden) pairs, so the MTP context
  skips image positions and pairs the first token after an image with that row).
"""

from __future__ import annotations

import ctypes
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qwythos.core.errors import QwythosError
from qwythos.core.gguf.mmproj import MmprojSummary, check_pair, read_mmproj_summary
from qwythos.core.llamacpp import interrupt
from qwythos.core.llamacpp.prompt_tokens import tokenize_prompt
from qwythos.core.model.chat_template import Prompt

VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"  # what libmtmd writes around an image
IMAGE_PLACEHOLDER = f"{VISION_START}<|image_pad|>{VISION_END}"
MAX_IMAGE_BYTES = 64 * 2**20


def _mtmd() -> Any:
    try:
        from llama_cpp import mtmd_cpp
    except (ImportError, OSError) as e:  # the wheel was built without libmtmd
        raise QwythosError(
            f"this llama-cpp-python has no multimodal library (libmtmd): {e}",
            "reinstall with `bash install.sh` (it builds llama-cpp-python with libmtmd)",
        ) from e
    return mtmd_cpp


@dataclass
class Segment:
    """One piece of a prompt: text tokens, or one image (nx x ny merged tokens)."""

    kind: str  # "text" | "image"
    n_tokens: int  # KV cells it fills
    n_pos: int  # positions it advances (M-RoPE image: max(nx, ny))
    tokens: list[int] = field(default_factory=list)
    nx: int = 0
    ny: int = 0
    chunk: Any = None  # the mtmd chunk (None: a text segment qwythos tokenized, Vision._protect)
    source: str = ""  # the image file
    digest: str = ""  # sha256 of the image file's bytes (a chat session's cache key)


@dataclass
class Layout:
    segments: list[Segment]
    chunks: Any = None  # the mtmd_input_chunks that own the segments' chunks

    @property
    def n_tokens(self) -> int:
        return sum(s.n_tokens for s in self.segments)

    @property
    def n_pos(self) -> int:
        return sum(s.n_pos for s in self.segments)

    @property
    def images(self) -> list[Segment]:
        return [s for s in self.segments if s.kind == "image"]

    def keys(self) -> list[Any]:
        """One key per position: text tokens as they are, an image as (\"image\", digest, j) for
        each of its positions - equal keys up to a position mean equal context state there."""
        out: list[Any] = []
        for s in self.segments:
            if s.kind == "text":
                out.extend(int(t) for t in s.tokens)
            else:
                out.extend(("image", s.digest, j) for j in range(s.n_pos))
        return out

    def cells_before(self, pos: int) -> int:
        """KV cells that the positions before `pos` fill (pos never inside an image)."""
        at = Positions()
        for s in self.segments:
            if at.pos >= pos:
                break
            if s.kind == "text" and at.pos + s.n_pos > pos:
                return at.cells + (pos - at.pos)
            at.advance(s)
        return at.cells


@dataclass
class Positions:
    """Where a sequence stands: `pos` (the next token's M-RoPE position) and `cells` (KV cells used)."""

    pos: int = 0
    cells: int = 0

    def advance(self, seg: Segment) -> None:
        self.pos += seg.n_pos
        self.cells += seg.n_tokens

    def text(self, n: int) -> None:
        self.pos += n
        self.cells += n

    def room(self, n_ctx: int) -> int:
        """Cells left in a context of n_ctx."""
        return n_ctx - self.cells


def _quiet(m: Any) -> None:
    """libmtmd logs every encode to stderr through its own callback: drop it like llama.cpp's."""
    from qwythos.core.llamacpp.log import _drop_log

    for fn in ("mtmd_log_set", "mtmd_helper_log_set"):
        try:
            getattr(m, fn)(_drop_log(), None)
        except (AttributeError, ctypes.ArgumentError):  # an older binding: logs stay on
            pass


def image_positions(nx: int, ny: int, pos0: int) -> np.ndarray:
    """(n_tokens, 3) M-RoPE positions (t, x, y) of an nx x ny image starting at pos0, row-major."""
    i = np.arange(nx * ny)
    return np.stack([np.full_like(i, pos0), pos0 + i % nx, pos0 + i // nx], axis=1)


@dataclass
class MtpRows:
    """What the MTP context takes for a prompt with images: text rows only, each token paired with
    the target row before it (for the first token after an image: the image's last row)."""

    tokens: np.ndarray  # (n,) int32
    hidden_rows: np.ndarray  # (n,) index into the target's rows of the prompt (cells order)
    positions: np.ndarray  # (n,) the token's M-RoPE position (MTP positions jump over images)


def mtp_rows(layout: Layout, start: Positions | None = None) -> MtpRows:
    """The MTP context's (token, hidden row, position) triples for `layout` decoded from `start`.

    llama.cpp's MTP graph takes (token embedding, hidden state) pairs and cannot take an image
    embedding, so image rows are skipped; the token after an image is paired with the hidden
    state of the image's last row. The prompt's first row has no row before it and is skipped."""
    tokens, rows, pos = [], [], []
    at = Positions(start.pos, start.cells) if start else Positions()
    row = 0  # target row index within this prompt
    for seg in layout.segments:
        if seg.kind == "text":
            for j, tok in enumerate(seg.tokens):
                if row > 0:
                    tokens.append(tok)
                    rows.append(row - 1)
                    pos.append(at.pos + j)
                row += 1
        else:
            row += seg.n_tokens
        at.advance(seg)
    return MtpRows(np.array(tokens, np.int32), np.array(rows, np.int64), np.array(pos, np.int32))


@dataclass
class Prefill:
    positions: Positions
    logits: np.ndarray  # the last row's logits (n_vocab,)
    last_hidden: np.ndarray | None  # the last row's hidden state (post-norm), when the context outputs it


class Vision:
    """An mtmd context: the mmproj bound to a loaded text model (core/llamacpp/handles.Model)."""

    def __init__(self, model: Any, mmproj: str | Path, *, threads: int | None = None) -> None:
        self.model = model
        self.summary: MmprojSummary = read_mmproj_summary(mmproj)
        check_pair(model.path, self.summary)
        m = _mtmd()
        params = m.mtmd_context_params_default()
        params.use_gpu = False
        params.print_timings = False
        params.warmup = False
        if threads:
            params.n_threads = threads
        self._m = m
        _quiet(m)
        self.ctx = m.mtmd_init_from_file(str(Path(mmproj)).encode(), model.handle, params)
        if not self.ctx:
            raise QwythosError(
                f"llama.cpp's libmtmd could not load {mmproj} for {model.path}",
                "use the mmproj converted from the same checkpoint (`qwythos convert SRC --mmproj FILE`)",
            )
        if not m.mtmd_support_vision(self.ctx):
            self.close()
            raise QwythosError(f"{mmproj} has no vision encoder", "pass a vision mmproj")
        self.mrope = bool(m.mtmd_decode_use_mrope(self.ctx))
        self.threads = threads
        self.marker = m.mtmd_default_marker().decode()
        self._bitmaps: list[Any] = []

    # -- images --------------------------------------------------------------------------------
    def load_image(self, path: str | Path) -> Any:
        """A bitmap of the picture at `path`; missing, empty or undecodable files get one message."""
        p = Path(path)
        if not p.is_file():
            what = "is a folder, not a picture" if p.is_dir() else "does not exist"
            raise QwythosError(f"image {p} {what}", "pass the path of a PNG or JPEG file")
        data = p.read_bytes()
        if not data or len(data) > MAX_IMAGE_BYTES:
            raise QwythosError(
                f"image {p} is {'empty' if not data else f'{len(data)} bytes'}", "pass a PNG or JPEG picture"
            )
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        bitmap = self._m.mtmd_helper_bitmap_init_from_buf(self.ctx, buf, len(data), False)
        if not bitmap:
            raise QwythosError(
                f"image {p} could not be decoded (corrupt, or not a picture format llama.cpp reads)",
                "pass a PNG, JPEG, BMP or GIF file",
            )
        self._m.mtmd_bitmap_set_id(bitmap, str(p).encode())
        self._bitmaps.append(bitmap)
        return bitmap

    def check_image(self, path: str | Path) -> None:
        """Raise the load_image message when `path` is not a picture libmtmd can read."""
        bitmap = self.load_image(path)
        self._m.mtmd_bitmap_free(bitmap)
        self._bitmaps.remove(bitmap)

    def tokenize(self, prompt: Prompt | str, images: list[str | Path]) -> Layout:
        """Split `prompt` (one media marker per image, in order) into text and image segments. A
        rendered `Prompt`'s protected texts stay text (core/llamacpp/prompt_tokens)."""
        m = self._m
        protected = prompt if isinstance(prompt, Prompt) and prompt.literals else None
        prompt = prompt.text if isinstance(prompt, Prompt) else prompt
        n_markers = prompt.count(self.marker)
        if n_markers != len(images):
            raise QwythosError(
                f"the prompt has {n_markers} image place(s) for {len(images)} image(s)",
                "pass one --image per picture the prompt refers to",
            )
        bitmaps = [self.load_image(p) for p in images]
        digests = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in images]
        arr = (m.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
        raw = prompt.encode()
        text = m.mtmd_input_text(raw, len(raw), False, True)
        chunks = m.mtmd_input_chunks_init()
        rc = m.mtmd_tokenize(self.ctx, chunks, ctypes.byref(text), arr, len(bitmaps))
        for b in bitmaps:  # the chunks hold the preprocessed pixels; the bitmaps are done
            m.mtmd_bitmap_free(b)
            self._bitmaps.remove(b)
        if rc != 0:
            m.mtmd_input_chunks_free(chunks)
            raise QwythosError(f"libmtmd could not tokenize the prompt with its images (code {rc})", None)
        segments = []
        for i in range(m.mtmd_input_chunks_size(chunks)):
            c = m.mtmd_input_chunks_get(chunks, i)
            kind = m.mtmd_input_chunk_get_type(c)
            if kind == m.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t(0)
                ptr = m.mtmd_input_chunk_get_tokens_text(c, ctypes.byref(n))
                toks = [int(ptr[j]) for j in range(n.value)]
                segments.append(Segment("text", len(toks), len(toks), tokens=toks, chunk=c))
            elif kind == m.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                img = m.mtmd_input_chunk_get_tokens_image(c)
                n_tok = int(m.mtmd_input_chunk_get_n_tokens(c))
                last = m.mtmd_image_tokens_get_decoder_pos(img, 0, n_tok - 1)
                nx, ny = int(last.x) + 1, int(last.y) + 1
                src = (m.mtmd_input_chunk_get_id(c) or b"").decode(errors="replace")
                seg = Segment(
                    "image", n_tok, int(m.mtmd_input_chunk_get_n_pos(c)), nx=nx, ny=ny, chunk=c, source=src
                )
                seg.digest = digests[sum(1 for x in segments if x.kind == "image")]
                segments.append(seg)
            else:
                m.mtmd_input_chunks_free(chunks)
                raise QwythosError("the prompt produced an audio chunk", "pass pictures only")
        if protected is not None:
            try:
                self._protect([s for s in segments if s.kind == "text"], protected)
            except BaseException:
                m.mtmd_input_chunks_free(chunks)
                raise
        return Layout(segments, chunks)

    def _protect(self, texts: list[Segment], prompt: Prompt) -> None:
        """libmtmd parses special tokens in all of the text: its text segments are tokenized again
        with the prompt's protected texts read as text. Each text segment is what libmtmd tokenized
        piece by piece: the previous image's end, the text between two markers, the next image's
        start; such a segment is then decoded from its tokens, not its chunk."""
        parts = prompt.split(self.marker)
        start, end = self.model.tokenize(VISION_START), self.model.tokenize(VISION_END)
        bug = QwythosError(
            "libmtmd split the prompt otherwise than qwythos expects",
            "this is a bug in qwythos; please report it",
        )
        if len(texts) != len(parts):
            raise bug
        for k, (seg, part) in enumerate(zip(texts, parts, strict=True)):
            before, after = (end if k > 0 else []), (start if k < len(parts) - 1 else [])
            if seg.tokens != before + self.model.tokenize(part.text) + after:
                raise bug
            seg.tokens = before + tokenize_prompt(self.model, part).tokens + after
            seg.n_tokens = seg.n_pos = len(seg.tokens)
            seg.chunk = None

    def encode(self, seg: Segment) -> np.ndarray:
        """The image's embeddings (n_tokens, n_embd), as llama.cpp's tower + merger compute them."""
        if seg.kind != "image":
            raise ValueError("encode takes an image segment")
        rc = self._m.mtmd_encode_chunk(self.ctx, seg.chunk)
        if rc != 0:
            raise QwythosError(f"llama.cpp failed to encode image {seg.source} (code {rc})", None)
        ptr = self._m.mtmd_get_output_embd(self.ctx)
        n_embd = int(self.summary.projection_dim or self.model.n_embd)
        return np.ctypeslib.as_array(ptr, shape=(seg.n_tokens, n_embd)).copy()

    # -- decoding ----------------------------------------------------------------------------------
    def decode_image(self, ctx: Any, seg: Segment, pos: int) -> None:
        """Encode one image and decode its embeddings into `ctx` at M-RoPE position `pos` (t = pos,
        x/y = pos + column/row). Afterwards ctx.n_past is the next position, pos + max(nx, ny), and
        ctx.n_last the rows of the last decode (the image's last row is the last of them)."""
        if seg.kind != "image":
            raise ValueError("decode_image takes an image segment")
        new_pos = ctypes.c_int32(pos)
        interrupt.clear()
        rc = self._m.mtmd_helper_eval_chunk_single(
            self.ctx, ctx.handle, seg.chunk, pos, 0, ctx.n_batch, False, ctypes.byref(new_pos)
        )
        if (
            rc == 2 and interrupt.requested()
        ):  # Ctrl-C / SIGTERM stopped the decode (core/llamacpp/interrupt.py)
            interrupt.clear()
            raise KeyboardInterrupt
        if rc != 0:
            raise QwythosError(
                f"llama.cpp failed to encode or decode image {seg.source} (code {rc}; context {ctx.n_ctx})",
                "raise --ctx" if rc == 1 else None,
            )
        if int(new_pos.value) - pos != seg.n_pos:
            raise QwythosError(
                f"position bookkeeping differs from libmtmd's ({int(new_pos.value) - pos} != {seg.n_pos})",
                "this is a bug in qwythos; please report it",
            )
        ctx.n_past = pos + seg.n_pos
        ctx.n_last = seg.n_tokens % ctx.n_batch or min(seg.n_tokens, ctx.n_batch)

    def prefill(self, ctx: Any, layout: Layout, start: Positions | None = None) -> Prefill:
        """Decode every segment into `ctx` (a core/llamacpp/handles.Context) from `start`; logits of the last row."""
        m = self._m
        at = Positions(start.pos, start.cells) if start else Positions()
        need = layout.n_tokens
        if at.room(ctx.n_ctx) < need:
            raise QwythosError(
                f"the prompt needs {need} cells ({len(layout.images)} image(s)) but the context has "
                f"{at.room(ctx.n_ctx)} left of {ctx.n_ctx}",
                "raise --ctx, or pass smaller / fewer images",
            )
        last_rows = 0
        for i, seg in enumerate(layout.segments):
            logits_last = i == len(layout.segments) - 1
            if seg.chunk is None:  # a text segment tokenized by qwythos (Vision._protect)
                for s in range(0, seg.n_tokens, ctx.n_batch):
                    ctx.decode(seg.tokens[s : s + ctx.n_batch], at.pos + s, outputs="last")
                at.advance(seg)
                last_rows = ctx.n_last
                continue
            new_pos = ctypes.c_int32(at.pos)  # in/out: the text path adds to it, the image path sets it
            rc = m.mtmd_helper_eval_chunk_single(
                self.ctx, ctx.handle, seg.chunk, at.pos, 0, ctx.n_batch, logits_last, ctypes.byref(new_pos)
            )
            if rc != 0:
                raise QwythosError(
                    f"llama.cpp failed to decode the prompt's {seg.kind} (code {rc}; context {ctx.n_ctx})",
                    "raise --ctx" if rc == 1 else None,
                )
            if int(new_pos.value) - at.pos != seg.n_pos:
                raise QwythosError(
                    f"position bookkeeping differs from libmtmd's ({int(new_pos.value) - at.pos} != {seg.n_pos})",
                    "this is a bug in qwythos; please report it",
                )
            at.advance(seg)
            last_rows = seg.n_tokens % ctx.n_batch or min(seg.n_tokens, ctx.n_batch)
        ctx.n_past = at.pos
        ctx.n_last = last_rows
        logits = ctx.logits(1)[0].copy() if last_rows else np.zeros(0, np.float32)
        hidden = None
        if ctx.kind == "target":
            try:
                hidden = ctx.last_hidden()
            except QwythosError:
                hidden = None
        return Prefill(at, logits, hidden)

    def free_layout(self, layout: Layout) -> None:
        if layout.chunks:
            self._m.mtmd_input_chunks_free(layout.chunks)
            layout.chunks = None

    def close(self) -> None:
        for b in self._bitmaps:
            self._m.mtmd_bitmap_free(b)
        self._bitmaps.clear()
        if getattr(self, "ctx", None):
            self._m.mtmd_free(self.ctx)
            self.ctx = None

    def __enter__(self) -> Vision:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
