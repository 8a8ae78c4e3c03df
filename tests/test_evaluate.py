"""qwythos eval: PPL, KLD and top-1 agreement against the BF16 base; the PNG plot."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from qwythos.core.errors import QwythosError
from qwythos.quantize.evaluate import evaluate, plot_png
from qwythos.quantize.pipeline import quantize

TEXT = " ".join(["The quick brown fox jumps over the lazy dog, then rests by the river bank."] * 30)


@pytest.fixture(scope="module")
def files(tiny_mtp_gguf: Path, tmp_path_factory: pytest.TempPathFactory):
    """The random tiny model (hidden 256: real k-quants, no fallbacks) and three quantizations."""
    rep = quantize(tiny_mtp_gguf, tmp_path_factory.mktemp("e"), types="Q4_K_M,Q6_K,Q8_0", verify=False)
    return tiny_mtp_gguf, [Path(o.path) for o in rep.outputs]


@pytest.fixture(scope="module")
def report(files):
    base, quants = files
    return evaluate(base, quants, TEXT)


def test_kld_falls_as_bits_rise(report) -> None:
    r = report
    assert [x.type for x in r.rows] == ["Q4_K_M", "Q6_K", "Q8_0"]
    klds = [x.mean_kld for x in r.rows]
    assert klds[0] > klds[1] > klds[2] > 0
    assert r.rows[2].top1_agreement > r.rows[0].top1_agreement
    assert r.n_tokens_scored > 100 and r.base_ppl > 1


def test_base_against_itself_is_zero(files) -> None:
    base, _ = files
    r = evaluate(base, [base], TEXT)
    assert r.rows[0].mean_kld == pytest.approx(0, abs=1e-9)
    assert r.rows[0].top1_agreement == 1.0
    assert r.rows[0].ppl == pytest.approx(r.base_ppl)


def test_short_text_refused(files) -> None:
    base, quants = files
    with pytest.raises(QwythosError):
        evaluate(base, quants, "hi")


def test_png_is_valid(report, tmp_path: Path) -> None:
    p = plot_png(report, tmp_path / "plot.png")
    data = p.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    idat_len = struct.unpack(">I", data[33:37])[0]
    raw = zlib.decompress(data[41 : 41 + idat_len])
    assert len(raw) == h * (1 + 3 * w)
    assert b"\xc8\x1e\x1e" in raw  # the red dots are there


TRAINED_TYPES = ["Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q8_0"]


def test_trained_model_kld_falls_as_bits_rise(rt_trained_gguf: Path, tmp_path: Path) -> None:
    """The trained tiny model (hidden 128, so k-quants fall back to q4_0/q5_0/q5_1/q8_0 per tensor)
    on the bundled held-out calibration text: fewer bits, larger KLD and fewer same top-1 tokens."""
    rep = quantize(rt_trained_gguf, tmp_path, types=TRAINED_TYPES, verify=False)
    sizes = [o.bytes for o in rep.outputs]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    text = (Path(__file__).resolve().parents[1] / "data" / "calibration.txt").read_text()
    r = evaluate(rt_trained_gguf, [o.path for o in rep.outputs], text)
    assert [x.type for x in r.rows] == TRAINED_TYPES and r.n_tokens_scored > 500
    klds = [x.mean_kld for x in r.rows]
    agree = [x.top1_agreement for x in r.rows]
    assert all(a > b for a, b in zip(klds, klds[1:], strict=False)), klds
    assert all(a < b for a, b in zip(agree, agree[1:], strict=False)), agree
    assert klds[-1] < 0.002 and agree[-1] > 0.97  # Q8_0 is nearly lossless
    assert r.rows[0].ppl > r.base_ppl  # Q2_K costs perplexity
