"""Images through libmtmd with our mmproj: embeddings against transformers, prompts, positions, errors.

The correctness check: the image embeddings llama.cpp computes from our projector equal
transformers' vision tower + merger (`Qwen3_5ForConditionalGeneration`, float32) on the same
pixels, at sizes neither side resizes (multiples of patch x merge = 32 px, at least 8 merged
tokens), non-square included, so the position-embedding interpolation and the 2-D rotary
positions are exercised: relative L2 error under 1e-3 with an F32 projector (llama.cpp's CPU GELU
uses an f16 table), under bf16's 2^-8 with the default F16 one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qwythos.convert.mmproj import convert_mmproj
from qwythos.convert.text import convert
from qwythos.core.errors import QwythosError
from qwythos.testing import tiny
from qwythos.testing.images import picture, write_png

pytest.importorskip("llama_cpp.mtmd_cpp")

SIZES = [(128, 96), (96, 160), (64, 128)]  # (width, height): 4x3, 3x5, 2x4 merged tokens


@pytest.fixture(scope="module")
def vision_models(tiny_qwythos_dir, tmp_path_factory) -> dict:
    """For the default and the wide tower: the HF folder, a trunk GGUF and F32/F16 projectors."""
    root = tmp_path_factory.mktemp("vision-models")
    out = {}
    for variant in ("qwythos", "vision-wide"):
        src = (
            tiny_qwythos_dir
            if variant == "qwythos"
            else tiny.build_tiny_checkpoint(root / variant, variant=variant)
        )
        trunk = convert(src, root / f"{variant}-trunk-BF16.gguf", mtp=False).output
        proj = {
            t: convert_mmproj(src, root / f"mmproj-{variant}-{t}.gguf", mmproj_type=t).output
            for t in ("f32", "f16")
        }
        out[variant] = {"src": src, "trunk": trunk, **proj}
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("images")
    return {(w, h): write_png(root / f"img-{w}x{h}.png", picture(w, h, seed=w + h)) for w, h in SIZES}


def _llama_embeddings(trunk: Path, mmproj: Path, image: Path) -> tuple[np.ndarray, tuple[int, int]]:
    from qwythos.core.llamacpp.handles import load_model
    from qwythos.runtime.vision import Vision

    with load_model(trunk, mtp=False) as model, Vision(model, mmproj, threads=2) as vis:
        layout = vis.tokenize(vis.marker, [image])
        seg = layout.images[0]
        emb = vis.encode(seg)
        vis.free_layout(layout)
        return emb, (seg.nx, seg.ny)


def _transformers_embeddings(src: Path, rgb: np.ndarray) -> np.ndarray:
    """transformers' Qwen3.5 vision tower + merger on the normalized, patchified pixels (float32)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import json

    pre = json.loads((src / "preprocessor_config.json").read_text())
    v = json.loads((src / "config.json").read_text())["vision_config"]
    p, m, tp = v["patch_size"], v["spatial_merge_size"], v["temporal_patch_size"]
    x = (rgb.astype(np.float32) / 255 - np.array(pre["image_mean"], np.float32)) / np.array(
        pre["image_std"], np.float32
    )
    h, w = rgb.shape[:2]
    gh, gw = h // p, w // p
    # Qwen2-VL patch order: (merge rows, merge cols, row in group, col in group); a patch is
    # (channel, temporal, py, px) flattened, the picture repeated over the 2 temporal frames
    chw = np.repeat(x.transpose(2, 0, 1)[None], tp, axis=0)  # (t, c, h, w)
    patches = chw.reshape(tp, 3, gh // m, m, p, gw // m, m, p).transpose(2, 5, 3, 6, 1, 0, 4, 7)
    pixel_values = torch.from_numpy(np.ascontiguousarray(patches).reshape(gh * gw, 3 * tp * p * p))
    transformers.logging.set_verbosity_error()
    model = transformers.Qwen3_5ForConditionalGeneration.from_pretrained(src, dtype=torch.float32)
    grid = torch.tensor([[1, gh, gw]])
    with torch.no_grad():
        out = model.model.get_image_features(pixel_values=pixel_values, image_grid_thw=grid)
    feats = out[0] if isinstance(out, (tuple, list)) else getattr(out, "pooler_output", out)
    if isinstance(feats, (tuple, list)):
        feats = feats[0]
    return feats.float().numpy().reshape(-1, v["out_hidden_size"])


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.reference
@pytest.mark.parametrize("variant", ["qwythos", "vision-wide"])
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_embeddings_match_transformers(variant: str, size, vision_models, images) -> None:
    vm = vision_models[variant]
    rgb = picture(*size, seed=size[0] + size[1])
    ref = _transformers_embeddings(vm["src"], rgb)
    ours32, (nx, ny) = _llama_embeddings(vm["trunk"], vm["f32"], images[size])
    assert (nx, ny) == (size[0] // 32, size[1] // 32) and ours32.shape == ref.shape
    err32 = _rel(ours32, ref)
    ours16, _ = _llama_embeddings(vm["trunk"], vm["f16"], images[size])
    err16 = _rel(ours16, ref)
    print(f"{variant} {size}: rel L2 error F32 {err32:.2e}, F16 {err16:.2e}")
    # F32: llama.cpp's CPU GELU reads an f16 table (error ~1e-4 per value, ~3e-4 measured)
    assert err32 < 1e-3
    assert err16 < 4e-3  # bf16 level: 8 bits of mantissa, 2^-8 = 3.9e-3


def test_layout_positions_and_cells(vision_models, images) -> None:
    from qwythos.core.llamacpp.handles import load_model
    from qwythos.runtime.vision import Positions, Vision, image_positions

    vm = vision_models["qwythos"]
    with load_model(vm["trunk"], mtp=False) as model, Vision(model, vm["f16"]) as vis:
        prompt = f"<|im_start|>user\n{vis.marker}what?{vis.marker}<|im_end|>\n"
        layout = vis.tokenize(prompt, [images[(128, 96)], images[(96, 160)]])
        kinds = [s.kind for s in layout.segments]
        assert kinds == ["text", "image", "text", "image", "text"]
        vs, ve = model.token_id("<|vision_start|>"), model.token_id("<|vision_end|>")
        assert layout.segments[0].tokens[-1] == vs and layout.segments[2].tokens[0] == ve  # libmtmd adds them
        a, b = layout.images
        assert (a.nx, a.ny, a.n_tokens, a.n_pos) == (4, 3, 12, 4)
        assert (b.nx, b.ny, b.n_tokens, b.n_pos) == (3, 5, 15, 5)
        texts = sum(s.n_tokens for s in layout.segments if s.kind == "text")
        assert layout.n_tokens == texts + 27 and layout.n_pos == texts + 9
        at = Positions()
        for s in layout.segments:
            at.advance(s)
        assert (at.pos, at.cells) == (layout.n_pos, layout.n_tokens)
        pos = image_positions(4, 3, 10)
        assert (
            pos[0].tolist() == [10, 10, 10]
            and pos[5].tolist() == [10, 11, 11]
            and pos[-1].tolist() == [10, 13, 12]
        )
        ctx = model.new_target(256)
        pre = vis.prefill(ctx, layout)
        assert (pre.positions.pos, pre.positions.cells) == (layout.n_pos, layout.n_tokens)
        assert np.isfinite(pre.logits).all()
        vis.free_layout(layout)


def test_generation_sees_the_image(vision_models, images) -> None:
    """Greedy continuation after a picture differs from the same text without one, and between pictures."""
    from qwythos.core.llamacpp.handles import load_model
    from qwythos.runtime.vision import Vision

    vm = vision_models["qwythos"]

    def greedy(vis, model, image, n=8) -> tuple[list[int], np.ndarray]:
        ctx = model.new_target(256)
        prompt = (
            f"<|im_start|>user\n{vis.marker if image else ''}Describe it.<|im_end|>\n<|im_start|>assistant\n"
        )
        layout = vis.tokenize(prompt, [image] if image else [])
        pre = vis.prefill(ctx, layout)
        first = pre.logits.copy()
        out, pos = [], pre.positions.pos
        tok = int(np.argmax(pre.logits))
        for _ in range(n):
            out.append(tok)
            ctx.decode([tok], pos)
            pos += 1
            tok = int(np.argmax(ctx.logits(1)[0]))
        vis.free_layout(layout)
        ctx.close()
        return out, first

    with load_model(vm["trunk"], mtp=False) as model, Vision(model, vm["f16"]) as vis:
        plain, l0 = greedy(vis, model, None)
        a, la = greedy(vis, model, images[(128, 96)])
        b, lb = greedy(vis, model, images[(96, 160)])
        a2, _ = greedy(vis, model, images[(128, 96)])
    assert a == a2  # deterministic
    assert not np.allclose(l0, la, atol=1e-3) and not np.allclose(la, lb, atol=1e-3)
    assert plain != a or a != b


def test_bad_images(vision_models, tmp_path: Path) -> None:
    from qwythos.core.llamacpp.handles import load_model
    from qwythos.runtime.vision import Vision

    vm = vision_models["qwythos"]
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with load_model(vm["trunk"], mtp=False) as model, Vision(model, vm["f16"]) as vis:
        with pytest.raises(QwythosError, match="does not exist"):
            vis.load_image(tmp_path / "nope.png")
        with pytest.raises(QwythosError, match="could not be decoded"):
            vis.load_image(junk)
        with pytest.raises(QwythosError, match="is empty"):
            vis.load_image(empty)
        with pytest.raises(QwythosError, match="1 image place"):
            vis.tokenize(f"a {vis.marker} b", [])


def test_projector_of_another_model(vision_models, tmp_path: Path) -> None:
    from qwythos.core.llamacpp.handles import load_model
    from qwythos.runtime.vision import Vision

    cfg = tiny.tiny_config("qwythos")
    cfg["text_config"]["hidden_size"] = 128
    cfg["vision_config"]["out_hidden_size"] = 128
    src = tiny.build_checkpoint_from_config(tmp_path / "narrow", cfg, include_mtp=False, with_tokenizer=False)
    other = convert_mmproj(src, tmp_path / "mmproj-narrow.gguf").output
    with load_model(vision_models["qwythos"]["trunk"], mtp=False) as model:
        with pytest.raises(QwythosError, match="belongs to another model"):
            Vision(model, other)
        with pytest.raises(QwythosError, match="not a vision projector"):
            Vision(model, vision_models["qwythos"]["trunk"])


def test_mtp_rows_skip_images() -> None:
    """The MTP context's rows: text only; the token after an image pairs with the image's last row."""
    from qwythos.runtime.vision import Layout, Positions, Segment, mtp_rows

    layout = Layout(
        [
            Segment("text", 3, 3, tokens=[10, 11, 12]),
            Segment("image", 12, 4, nx=4, ny=3),
            Segment("text", 2, 2, tokens=[13, 14]),
        ]
    )
    r = mtp_rows(layout)
    assert r.tokens.tolist() == [11, 12, 13, 14]
    assert r.hidden_rows.tolist() == [0, 1, 14, 15]  # 13 pairs with row 14 = the image's last row
    assert r.positions.tolist() == [1, 2, 7, 8]  # positions jump by max(4, 3) over the image
    later = mtp_rows(layout, Positions(pos=100, cells=90))
    assert later.positions.tolist() == [101, 102, 107, 108]
