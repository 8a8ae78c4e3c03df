"""Generation with pictures: MTP drafting after an image stays exact, positions apart from KV cells,
chat sessions reuse earlier images, and `run --image` / `chat /image` with one message per mistake.

The trained tiny model has no vision tower; a random tower of its width (the tiny Qwen3.5 vision
config, out_hidden_size 128) is converted to its projector. The image embeddings are not what the
model was trained on, but the engine's exactness does not depend on them: greedy MTP output must
equal plain output whatever the prompt holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qwythos.core.drafting.costs import DraftCosts
from qwythos.core.errors import QwythosError
from qwythos.runtime.chat import TURN_END, render_chat
from qwythos.runtime.draft_plan import draft_plan
from qwythos.runtime.speculative import Engine
from qwythos.testing.images import picture, write_png

pytest.importorskip("llama_cpp.mtmd_cpp")

TRAINED = Path(__file__).resolve().parents[1] / "data" / "tiny-trained"
# (width, height) -> merged tokens nx x ny: 4x3 (12 cells, 4 positions), 3x5, 8x8 (64 cells, 8 positions)
SIZES = {"a": (128, 96), "b": (96, 160), "big": (256, 256)}
QUESTIONS = ["Describe it.", "def main():", "What is in the picture?"]


@pytest.fixture(scope="module")
def projector(tmp_path_factory) -> Path:
    """An F16 mmproj of the trained model's width (a random tiny vision tower)."""
    from qwythos.convert.mmproj import convert_mmproj
    from qwythos.testing import tiny

    root = tmp_path_factory.mktemp("vision-run")
    cfg = json.loads((TRAINED / "config.json").read_text())
    src = tiny.build_checkpoint_from_config(root / "tower", cfg, include_mtp=False, with_tokenizer=False)
    return convert_mmproj(src, root / "mmproj-trained-F16.gguf").output


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pictures")
    return {k: write_png(root / f"{k}.png", picture(w, h, seed=w * h)) for k, (w, h) in SIZES.items()}


@pytest.fixture(params=["bf16", "f32"])
def vmodel(request, projector):
    """(model, Vision) for the trained tiny model in BF16 and in F32."""
    from qwythos.runtime.vision import Vision

    m = request.getfixturevalue("rt_trained_model" if request.param == "bf16" else "rt_trained_f32_model")
    with Vision(m, projector, threads=1) as vis:
        yield m, vis


def _layout(m, vis, text: str, imgs: list[Path], *, system: str | None = None):
    from qwythos.runtime.vision import IMAGE_PLACEHOLDER

    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": IMAGE_PLACEHOLDER * len(imgs) + text}
    ]
    prompt = render_chat(m.info.chat_template, msgs).replace(IMAGE_PLACEHOLDER, vis.marker)
    return vis.tokenize(prompt, imgs)


#: auto starts from these costs (a verify of k tokens as cheap as one, as on a GPU: it drafts), so
#: its choices depend on acceptance only, never on how busy the machine is: the batches it verifies,
#: and with them llama.cpp's float noise in BF16, are the same on every run
AUTO_COSTS = DraftCosts([1.0] * 5, 0.01, [0.7] * 4)


def _gen(m, vis, layout, draft, n=32, n_ctx=1024):
    costs = AUTO_COSTS if draft == "auto" else None
    with Engine(m, draft_plan(m, draft, costs=costs), n_ctx=n_ctx, vision=vis) as eng:
        return eng.generate(layout, max_tokens=n, stop=list(TURN_END))


def test_greedy_mtp_after_images_equals_plain(vmodel, images):
    """auto and a fixed draft of 2 give plain decoding's tokens with one and with two pictures; the
    head really drafts after the image (its first row pairs with the image's last hidden row)."""
    m, vis = vmodel
    drafted = accepted = 0
    cases = [(q, [images["a"]]) for q in QUESTIONS] + [(QUESTIONS[0], [images["b"], images["a"]])]
    for q, imgs in cases:
        layout = _layout(m, vis, q, imgs)
        try:
            plain = _gen(m, vis, layout, 0)
            assert plain.stats.prompt_tokens == layout.n_tokens and layout.n_tokens > layout.n_pos
            for d in (2, "auto"):
                g = _gen(m, vis, layout, d)
                assert g.tokens == plain.tokens and g.text == plain.text, (q, len(imgs), d)
                drafted += g.stats.drafted
                accepted += g.stats.accepted
                if d == 2:
                    assert g.stats.drafted > 0
        finally:
            vis.free_layout(layout)
    assert drafted > 0 and accepted > 0


def test_the_image_changes_the_generation(rt_trained_f32_model, projector, images):
    """The same question without a picture, with picture a and with picture b: three replies (the
    trained tiny model answers several other questions with one memorized loop whatever it sees)."""
    from qwythos.runtime.vision import Vision

    m = rt_trained_f32_model
    q = "class Foo:"
    with Vision(m, projector, threads=1) as vis:
        layouts = [
            _layout(m, vis, q, []),
            _layout(m, vis, q, [images["a"]]),
            _layout(m, vis, q, [images["b"]]),
        ]
        assert [len(lay.images) for lay in layouts] == [0, 1, 1]
        for d in (0, 2):
            g0, ga, gb = (_gen(m, vis, lay, d).tokens for lay in layouts)
            assert g0 != ga and ga != gb and g0 != gb, d
        # the text-only layout runs exactly like its plain token list
        toks = [t for s in layouts[0].segments for t in s.tokens]
        with Engine(m, draft_plan(m, 0), n_ctx=1024) as eng:
            plain = eng.generate(toks, max_tokens=32, stop=list(TURN_END)).tokens
        assert plain == _gen(m, vis, layouts[0], 0).tokens
        for lay in layouts:
            vis.free_layout(lay)


@pytest.mark.parametrize("draft", [0, 2])
def test_cells_and_positions_are_counted_apart(rt_trained_model, projector, images, draft):
    """A 256x256 picture is 64 KV cells but 8 positions: the room check counts cells (a context
    that holds the positions but not the cells is refused up front, and generation stops with
    "context" at the cell limit rather than failing in llama.cpp), truncation uses positions."""
    from qwythos.runtime.vision import Vision

    m = rt_trained_model
    with Vision(m, projector, threads=1) as vis:
        layout = _layout(m, vis, QUESTIONS[0], [images["big"]])
        (img,) = layout.images
        assert (img.nx, img.ny, img.n_tokens, img.n_pos) == (8, 8, 64, 8)
        assert layout.n_tokens - layout.n_pos == 56
        with Engine(m, draft_plan(m, draft, costs=None), n_ctx=layout.n_pos + 16, vision=vis) as eng:
            with pytest.raises(QwythosError, match=r"1 image\(s\) included"):
                eng.generate(layout, max_tokens=4)
        n_ctx = layout.n_tokens + 6
        with Engine(m, draft_plan(m, draft, costs=None), n_ctx=n_ctx, vision=vis) as eng:
            g = eng.generate(layout, max_tokens=0)
            assert eng.target.n_past == layout.n_pos and eng._room() == n_ctx - layout.n_tokens
            g = eng.generate(layout, max_tokens=50)
            assert g.finish_reason == "context", g.finish_reason
            # 6 cells left: 6 tokens decoded, a 7th chosen from the last logits (nothing to decode)
            assert len(g.tokens) == 7
            assert eng.target.n_past == layout.n_pos + 6  # positions, not cells
        vis.free_layout(layout)


def test_chat_session_reuses_earlier_images(rt_trained_f32_model, projector, images):
    """Turn 2 restores the checkpoint after turn 1's picture (no second encode) and answers like
    a fresh run; the same conversation with another first picture reuses nothing."""
    from qwythos.runtime.session import ChatSession
    from qwythos.runtime.vision import IMAGE_PLACEHOLDER, Vision

    m = rt_trained_f32_model
    with Vision(m, projector, threads=1) as vis, Engine(m, draft_plan(m, 2), n_ctx=2048, vision=vis) as eng:
        session = ChatSession(eng)
        msgs = [{"role": "user", "content": IMAGE_PLACEHOLDER + "Describe it."}]

        def layout_of(msgs, imgs):
            text = render_chat(m.info.chat_template, msgs).replace(IMAGE_PLACEHOLDER, vis.marker)
            return vis.tokenize(text, imgs)

        l1 = layout_of(msgs, [images["a"]])
        g1 = session.generate(l1, max_tokens=12, stop=list(TURN_END))
        assert g1.stats.prefilled_tokens == l1.n_tokens
        assert g1.tokens == _gen(m, vis, l1, 0, n=12).tokens
        msgs += [
            {"role": "assistant", "content": g1.text},
            {"role": "user", "content": IMAGE_PLACEHOLDER + "And this one?"},
        ]
        l2 = layout_of(msgs, [images["a"], images["b"]])
        g2 = session.generate(l2, max_tokens=12, stop=list(TURN_END))
        ck = session.checkpoint_position(l1.keys())
        assert l2.keys()[:ck] == l1.keys()[:ck]
        assert g2.stats.prefilled_tokens == l2.n_tokens - l2.cells_before(ck) < l2.n_tokens - 12
        assert g2.tokens == _gen(m, vis, l2, 0, n=12).tokens
        # the first picture swapped: every checkpoint lies past it, so none serves (no stale reuse)
        l3 = layout_of(msgs, [images["b"], images["b"]])
        assert l3.keys()[:ck] != l1.keys()[:ck]
        g3 = session.generate(l3, max_tokens=12, stop=list(TURN_END))
        assert g3.stats.prefilled_tokens == l3.n_tokens
        assert g3.tokens == _gen(m, vis, l3, 0, n=12).tokens
        for lay in (l1, l2, l3):
            vis.free_layout(lay)


def test_layout_keys_and_cells_before(rt_trained_model, projector, images):
    from qwythos.runtime.vision import Vision

    m = rt_trained_model
    with Vision(m, projector, threads=1) as vis:
        layout = _layout(m, vis, "hi", [images["a"], images["a"]])
        keys = layout.keys()
        assert len(keys) == layout.n_pos
        a, b = layout.images
        assert a.digest == b.digest and len(a.digest) == 64
        p0 = layout.segments[0].n_pos
        assert keys[p0] == ("image", a.digest, 0) and keys[p0 + a.n_pos - 1] == ("image", a.digest, 3)
        assert layout.cells_before(p0) == p0 and layout.cells_before(p0 + 4) == p0 + 12
        assert layout.cells_before(layout.n_pos) == layout.n_tokens
        vis.free_layout(layout)


def test_engine_refuses_images_it_cannot_run(rt_trained_model, projector, images):
    from qwythos.runtime.vision import Layout, Segment, Vision

    m = rt_trained_model
    with Vision(m, projector, threads=1) as vis:
        layout = _layout(m, vis, "hi", [images["a"]])
        with (
            Engine(m, draft_plan(m, 0), n_ctx=512) as eng,
            pytest.raises(QwythosError, match="no vision projector"),
        ):
            eng.generate(layout)
        # libmtmd closes an image with <|vision_end|>, so only a hand-made layout can end with one
        ends_with_image = Layout([Segment("text", 2, 2, tokens=[1, 2]), layout.images[0]])
        with (
            Engine(m, draft_plan(m, 0), n_ctx=512, vision=vis) as eng,
            pytest.raises(QwythosError, match="ends with"),
        ):
            eng.generate(ends_with_image)
        vis.free_layout(layout)


# ------------------------------------------------------------------------------------------ CLI
runner = CliRunner()


@pytest.fixture(scope="module")
def beside(rt_trained_gguf, projector, tmp_path_factory) -> Path:
    """The trained GGUF with its mmproj*.gguf in the same folder (found without --mmproj)."""
    d = tmp_path_factory.mktemp("beside")
    (d / "trained-BF16.gguf").symlink_to(rt_trained_gguf)
    (d / "mmproj-trained-F16.gguf").symlink_to(projector)
    return d / "trained-BF16.gguf"


def test_run_with_images_mtp_equals_plain(rt_trained_gguf, projector, images):
    base = ["run", str(rt_trained_gguf), "--mmproj", str(projector), "--temp", "0", "--max-tokens", "24"]
    args = base + ["--image", str(images["a"]), "--image", str(images["b"]), "-p", "Compare them.", "--json"]
    a = runner.invoke(app(), args + ["--draft", "2", "-t", "1"])
    b = runner.invoke(app(), args + ["--no-mtp", "-t", "1"])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    assert ja["generation"]["tokens"] == jb["generation"]["tokens"]
    assert ja["generation"]["stats"]["drafted"] > 0
    assert [(i["nx"], i["ny"], i["tokens"], i["positions"]) for i in ja["images"]] == [
        (4, 3, 12, 4),
        (3, 5, 15, 5),
    ]
    assert ja["mmproj"] == str(projector)
    c = runner.invoke(app(), base + ["-p", "Compare them.", "--json", "--no-mtp", "-t", "1"])
    assert c.exit_code == 0, c.output
    assert (
        json.loads(c.stdout)["images"] == []
        and json.loads(c.stdout)["generation"]["tokens"] != jb["generation"]["tokens"]
    )


def test_run_image_mistakes_one_message_each(rt_trained_gguf, beside, images, tmp_path):
    from qwythos.convert.mmproj import convert_mmproj
    from qwythos.testing import tiny

    lone = tmp_path / "lone" / "model.gguf"
    lone.parent.mkdir()
    lone.symlink_to(rt_trained_gguf)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    cfg = tiny.tiny_config("qwythos")  # width 256: the trained model is 128 wide
    other_src = tiny.build_checkpoint_from_config(
        tmp_path / "w256", cfg, include_mtp=False, with_tokenizer=False
    )
    other = convert_mmproj(other_src, tmp_path / "mmproj-w256.gguf").output

    def run(model: Path, *extra: str):
        r = runner.invoke(app(), ["run", str(model), "-p", "hi", "--max-tokens", "2", "-t", "1", *extra])
        return r.exit_code, " ".join(r.output.split())

    code, out = run(lone, "--image", str(images["a"]))
    assert (
        code == 1 and "needs a vision projector, and none lies beside model.gguf" in out and "--mmproj" in out
    )
    code, out = run(beside, "--image", str(tmp_path / "missing.png"))
    assert code == 1 and "missing.png does not exist" in out
    code, out = run(beside, "--image", str(bad))
    assert code == 1 and "bad.png could not be decoded" in out
    code, out = run(lone, "--mmproj", str(other), "--image", str(images["a"]))
    assert code == 1 and "belongs to another model" in out and "width 256" in out
    code, out = run(beside, "--image", str(images["a"]), "--raw")
    assert code == 1 and "--raw cannot place --image" in out
    # found beside the model, and said so
    code, out = run(beside, "--image", str(images["a"]))
    assert code == 0 and "vision projector: mmproj-trained-F16.gguf (found beside the model)" in out


def test_chat_with_image_and_tools(beside, rt_trained_gguf, images, tmp_path):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"type": "function", "function": {"name": "look", "parameters": {}}}]))
    lines = [
        f"/image {images['a']}",
        "What is it?",
        f"/image {tmp_path / 'nope.png'}",
        f"/image {images['b']}",
        "And this?",
        "/exit",
    ]
    r = runner.invoke(
        app(),
        ["chat", str(beside), "--max-tokens", "6", "--temp", "0", "-t", "1", "--tools", str(tools)],
        input="\n".join(lines) + "\n",
    )
    out = " ".join(r.output.split())
    assert r.exit_code == 0, r.output
    assert "found beside the model" in out and out.count("attached") == 2
    assert "nope.png does not exist" in out
    assert out.count("generated") == 2
    assert "new) at" in out  # turn 2 reused turn 1's prefix, its picture included
    lone = tmp_path / "lone.gguf"
    lone.symlink_to(rt_trained_gguf)
    r = runner.invoke(
        app(), ["chat", str(lone), "--max-tokens", "2", "-t", "1"], input=f"/image {images['a']}\n/exit\n"
    )
    assert r.exit_code == 0 and "/image needs a vision projector" in " ".join(r.output.split())


def app():
    from qwythos.cli import app as a

    return a
