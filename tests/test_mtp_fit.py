"""`qwythos mtp fit`: the torch head against llama.cpp's, and short real fits on the tiny models.

The fine-tuned tiny model (data/tiny-finetuned, scripts/finetune_tiny.py) is data/tiny-trained's
trunk trained further on prose with the head left as it was: the situation `mtp fit` is for.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from qwythos.core.errors import QwythosError
from qwythos.core.gguf.file import read_header, read_tensor_bytes

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
FINETUNED = REPO / "data" / "tiny-finetuned"
HELDOUT = FINETUNED / "heldout.txt"
SHORT = dict(seq=128, steps=12, batch=4, eval_every=6, save_every=4)


@pytest.fixture(scope="module")
def finetuned_gguf(tmp_path_factory):
    """BF16 GGUF of the fine-tuned trunk with its original (now stale) head."""
    from qwythos.convert.text import convert

    d = tmp_path_factory.mktemp("fit")
    return convert(FINETUNED, d / "finetuned-BF16.gguf").output


@pytest.fixture(scope="module")
def prose_text(tmp_path_factory):
    """Fine-tune-domain training text (the train split of scripts/finetune_tiny.py), ~12k tokens."""
    sys.path.insert(0, str(REPO / "scripts"))
    from finetune_tiny import topics

    train, _ = topics()
    p = tmp_path_factory.mktemp("fit-text") / "prose.txt"
    p.write_text("\n\n".join(train)[:40_000], encoding="utf-8")
    return p


def _settings(**kw):
    from qwythos.mtp.fit import FitSettings

    return FitSettings(**{**SHORT, **kw})


def _trunk_and_head(path: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    from qwythos.core.model.structure import n_trunk_layers, split_block_name

    hdr = read_header(path)
    il = n_trunk_layers(hdr)
    trunk, head = {}, {}
    for t in hdr.tensors:
        sb = split_block_name(t.name)
        (head if sb and sb[0] == il else trunk)[t.name] = read_tensor_bytes(hdr, t.name)
    return trunk, head


# ---------------------------------------------------------------- the forward


def test_torch_head_equals_llama_mtp_context_at_depth_1_and_2(trained_ggufs):
    """The plain-torch head gives llama.cpp's own MTP logits and fed-back state, depth 1 and 2."""
    from qwythos.core.llamacpp.handles import load_model
    from qwythos.mtp.fit import load_head

    gguf = trained_ggufs["full"]
    head, vocab, _ = load_head(gguf)
    text = (REPO / "data" / "calibration.txt").read_text()
    m = load_model(gguf, mtp=True)
    try:
        toks = m.tokenize(text)[:96]
        n = len(toks)
        tgt = m.new_target(256, n_draft=1, n_batch=128)
        tgt.decode(toks, 0, outputs="all")
        hidden = tgt.hidden(n).copy()
        mtp = m.new_draft(256, n_batch=128)
        h_prev = np.concatenate([np.zeros((1, m.n_embd), np.float32), hidden[:-1]])
        mtp.decode(toks, 0, outputs="all", hidden=h_prev)
        ll1 = mtp.logits(n).copy()
        g1_ll = mtp.hidden(n).copy()
        # depth 2 from a few positions p: rows 0..p in the cache, then (x_{p+1}, g1_p) at p+1
        ll2 = {}
        for p in (5, 40, 90):
            mtp.truncate(p + 1)
            mtp.decode([toks[p + 1]], p + 1, outputs="last", hidden=g1_ll[p : p + 1])
            ll2[p] = mtp.logits(1)[0].copy()
            mtp.truncate(0)
            mtp.decode(toks, 0, outputs="all", hidden=h_prev)
    finally:
        m.close()
    t = torch.tensor(toks)[None]
    with torch.no_grad():
        g = head.chain(torch.from_numpy(h_prev)[None], [vocab.embed.rows(t), vocab.embed.rows(t[:, 1:])])
        l1 = vocab.logits(g[0], None)[0].numpy()
        l2 = vocab.logits(g[1], None)[0].numpy()
    scale = np.abs(ll1).max()
    assert np.abs(l1 - ll1).max() < 0.02 * scale
    assert (l1.argmax(1) == ll1.argmax(1)).mean() >= 0.97
    assert np.abs(g[0][0].numpy() - g1_ll).max() < 0.05 * np.abs(g1_ll).max()
    for p, row in ll2.items():
        assert np.abs(l2[p] - row).max() < 0.02 * scale, p
        assert l2[p].argmax() == row.argmax(), p


# ---------------------------------------------------------------- a real short fit


@pytest.fixture(scope="module")
def short_fit(finetuned_gguf, prose_text, tmp_path_factory):
    from qwythos.mtp.fit import fit

    out = tmp_path_factory.mktemp("fit-out") / "fitted.gguf"
    return fit(finetuned_gguf, texts=[prose_text], out=out, settings=_settings(steps=40), threads=1)


def test_fit_keeps_trunk_bytes_and_changes_the_head(finetuned_gguf, short_fit):
    trunk0, head0 = _trunk_and_head(finetuned_gguf)
    trunk1, head1 = _trunk_and_head(short_fit.output)
    assert trunk1 == trunk0  # every trunk tensor byte-identical
    assert head1.keys() == head0.keys()
    changed = [n for n in head0 if head0[n] != head1[n]]
    assert any(n.endswith("nextn.eh_proj.weight") for n in changed)
    assert any(n.endswith("ffn_down.weight") for n in changed)
    hdr0, hdr1 = read_header(finetuned_gguf), read_header(short_fit.output)
    assert {t.name: t.ggml_type for t in hdr1.tensors} == {t.name: t.ggml_type for t in hdr0.tensors}
    assert short_fit.head_types and short_fit.resumed_from == 0


def test_short_fit_does_not_lower_llama_acceptance(finetuned_gguf, short_fit):
    """llama.cpp's own acceptance on held-out prose: the fitted head drafts at least as well."""
    from qwythos.mtp.validate import validate

    before = validate(finetuned_gguf, text=HELDOUT, depth=2, max_tokens=1024)
    after = validate(short_fit.output, text=HELDOUT, depth=2, max_tokens=1024)
    assert after.structure.ok and after.depths[0].total == before.depths[0].total
    assert after.depths[0].rate >= before.depths[0].rate
    assert short_fit.accept_after[0] >= short_fit.accept_before[0]


def test_fitted_head_keeps_greedy_output_identical(short_fit):
    from qwythos.core.llamacpp.handles import load_model
    from qwythos.runtime.speculative import generate

    m = load_model(short_fit.output)
    try:
        toks = m.tokenize("The for statement is used to iterate over the elements of a sequence")
        plain = generate(m, toks, max_tokens=40, draft=0, costs=None)
        spec = generate(m, toks, max_tokens=40, draft=3, costs=None)
        assert spec.tokens == plain.tokens
        assert spec.stats.drafted > 0 and spec.stats.accepted > 0
    finally:
        m.close()


def test_separate_draft_and_init(finetuned_gguf, prose_text, tmp_path):
    """--separate writes a draft GGUF the runtime takes with --draft; --init needs no head."""
    from qwythos.core.llamacpp.handles import load_model
    from qwythos.mtp.fit import fit

    r = fit(
        finetuned_gguf,
        texts=[prose_text],
        out=tmp_path / "draft.gguf",
        separate=True,
        init=True,
        settings=_settings(steps=4, eval_every=4),
        head_type="f16",
        threads=1,
    )
    assert r.mode == "separate" and r.start == "fresh (--init)"
    hdr = read_header(r.output)
    assert "blk.0.attn_norm.weight" not in {t.name for t in hdr.tensors}
    m = load_model(finetuned_gguf, draft_path=r.output)
    try:
        assert m.has_mtp and m.draft_model is not None
        ctx = m.new_draft(64)
        ctx.decode([1], 0, hidden=np.zeros((1, m.n_embd), np.float32))
        assert np.isfinite(ctx.logits(1)).all()
    finally:
        m.close()


# ---------------------------------------------------------------- resuming


def test_interrupted_fit_resumes_from_chunks_and_checkpoint(finetuned_gguf, prose_text, tmp_path):
    from qwythos.mtp.fit import fit

    out = tmp_path / "r.gguf"
    seen = []

    def stop_at_6(stage, p):
        if stage == "train" and p.step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(finetuned_gguf, texts=[prose_text], out=out, settings=_settings(), progress=stop_at_6)
    assert not out.exists()
    work = tmp_path / "r.gguf.work"
    chunks = sorted(work.glob("chunk-*/hidden.npy"))
    assert chunks and list(work.glob("train-*.pt"))
    stamp = [c.stat().st_mtime_ns for c in chunks]

    def record(stage, p):
        seen.append((stage, getattr(p, "tokens_done", None), getattr(p, "step", None)))

    r = fit(finetuned_gguf, texts=[prose_text], out=out, settings=_settings(), progress=record)
    assert r.resumed_from == 4  # the checkpoint of step 4 (saved every 4 steps)
    assert [c.stat().st_mtime_ns for c in chunks] == stamp  # nothing collected again
    assert [s for s in seen if s[0] == "collect"] == [("collect", r.tokens, None)]
    assert min(s[2] for s in seen if s[0] == "train") == 4
    assert out.is_file()


# ---------------------------------------------------------------- errors


def test_missing_torch_names_the_install(monkeypatch, trained_ggufs):
    from typer.testing import CliRunner

    from qwythos.cli import app
    from qwythos.mtp.fit import fit

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(QwythosError) as e:
        fit(trained_ggufs["full"])
    assert "pip install 'qwythos[fit]'" in e.value.hint
    res = CliRunner().invoke(app, ["mtp", "fit", str(trained_ggufs["full"])])
    assert res.exit_code == 1
    assert "qwythos[fit]" in " ".join(res.output.split())


def test_trunk_without_head_needs_init(trained_ggufs, tmp_path):
    from qwythos.mtp.fit import fit

    with pytest.raises(QwythosError) as e:
        fit(trained_ggufs["trunk"], out=tmp_path / "x.gguf")
    assert "has no MTP head" in e.value.message and "--init" in e.value.hint


# ---------------------------------------------------------------- k-quant heads


def test_k_quant_head_through_llamas_quantizer(tiny_mtp_gguf, tiny_trunk_gguf, tmp_path):
    """--type q4_k: the head's matrices in Q4_K bytes from ggml_quantize_chunk; the model drafts."""
    from gguf import GGMLQuantizationType

    from qwythos.core.llamacpp.handles import load_model
    from qwythos.mtp.restore import restore
    from qwythos.mtp.sources import dequantize, open_gguf_head

    r = restore(tiny_trunk_gguf, tiny_mtp_gguf, tmp_path / "q4k.gguf", head_type="q4_k")
    src = {t.name: t for t in open_gguf_head(tiny_mtp_gguf).tensors}
    got = {t.name: t for t in open_gguf_head(r.output).tensors}
    assert got["attn_q.weight"].ggml_type == GGMLQuantizationType.Q4_K
    assert got["attn_norm.weight"].ggml_type == GGMLQuantizationType.F32
    a, b = dequantize(src["ffn_up.weight"]), dequantize(got["ffn_up.weight"])
    assert np.abs(a - b).mean() < 0.15 * np.abs(a).mean()
    m = load_model(r.output, mtp=True)
    try:
        ctx = m.new_draft(64)
        ctx.decode([1], 0, hidden=np.zeros((1, m.n_embd), np.float32))
        assert np.isfinite(ctx.logits(1)).all()
    finally:
        m.close()
