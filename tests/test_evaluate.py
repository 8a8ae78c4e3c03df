"""qwythos eval: PPL, KLD and top-1 agreement against the BF16 base; the PNG plot (matplotlib)."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qwythos.cli import app
from qwythos.core.errors import QwythosError
from qwythos.quantize.evaluate import (
    EvalReport,
    EvalRow,
    default_text,
    evaluate,
    plot_figure,
    plot_png,
)
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


def synthetic(klds: list[float]) -> EvalReport:
    types = ["Q2_K", "Q4_K_M", "Q8_0", "BF16"][: len(klds)]
    rows = [
        EvalRow(f"m-{t}.gguf", t, gib=1.5 + i, bpw=2.6 + 2 * i, ppl=9.0, mean_kld=k, top1_agreement=0.9)
        for i, (t, k) in enumerate(zip(types, klds, strict=False))
    ]
    return EvalReport("dir/Qwythos-BF16.gguf", 1000, 256, 7.5, rows, text="calibration.txt")


def test_plot_is_readable_named_points_units_log_axis(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    fig = plot_figure(synthetic([0.3, 0.03, 0.001, 0.0]))
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert "bits per weight" in ax.get_xlabel() and "nats per token" in ax.get_ylabel()
    assert "Qwythos-BF16.gguf" in ax.get_title() and "calibration.txt" in ax.get_title()
    labels = [t.get_text() for t in ax.texts]
    assert [lab.split("\n")[0] for lab in labels] == ["Q2_K", "Q4_K_M", "Q8_0", "BF16"]
    assert "1.50 GiB" in labels[0] and "(KLD 0)" in labels[3]  # identical files sit on a floor
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels() if t.get_text()]  # tick values are drawn
    assert [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    lo, hi = ax.get_ylim()
    assert lo < 0.001 / 10 * 1.0001 and hi > 0.3  # every point inside the axes
    same = synthetic([0.3, 0.01, 0.01])
    same.rows[2].bpw = same.rows[1].bpw  # a small model's Q6_K falling back to Q8_0: one point
    assert [t.get_text().split("\n")[0] for t in plot_figure(same).axes[0].texts] == ["Q2_K", "Q4_K_M = Q8_0"]
    p = plot_png(synthetic([0.3, 0.03]), tmp_path / "q.png")
    data = p.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (960, 624)


def test_plot_of_a_real_evaluation(report, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    ax = plot_figure(report).axes[0]
    assert [t.get_text().split("\n")[0] for t in ax.texts] == ["Q4_K_M", "Q6_K", "Q8_0"]
    assert [r.bpw for r in report.rows] == sorted(r.bpw for r in report.rows)
    assert 4 < report.rows[0].bpw < report.rows[2].bpw < 9


def test_without_matplotlib_plot_says_how_to_get_it(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    with pytest.raises(QwythosError) as e:
        plot_png(synthetic([0.1]), tmp_path / "p.png")
    assert "matplotlib" in e.value.message and "qwythos[plot]" in (e.value.hint or "")
    assert not (tmp_path / "p.png").exists()
    base = tmp_path / "base.gguf"
    base.write_bytes(b"not even read")
    res = CliRunner().invoke(app, ["eval", str(base), str(base), "--plot", str(tmp_path / "p.png")])
    assert res.exit_code == 1 and "qwythos[plot]" in res.output  # refused before any scoring


def test_default_text_is_the_bundled_calibration_text() -> None:
    t = default_text()
    assert t.name == "calibration.txt" and len(t.read_text().split()) > 500


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
