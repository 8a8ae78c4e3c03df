"""qwythos plan: sizes from llama.cpp's dry run on a header-only GGUF, equal to the real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwythos.core.errors import QwythosError
from qwythos.core.model import qwen35
from qwythos.quantize.pipeline import quantize
from qwythos.quantize.plan import IMATRIX_KV_BYTES, PLAN_TYPES, kv_cache_bytes, plan, recurrent_state_bytes

REPO = Path(__file__).resolve().parents[1]
PUBLISHED_GIB = {"Q4_K_M": 5.24, "Q5_K_M": 6.02, "Q6_K": 6.85, "Q8_0": 8.87, "BF16": 16.69}


@pytest.fixture(scope="module")
def tiny(tiny_mtp_gguf: Path) -> Path:
    return tiny_mtp_gguf


def test_plan_equals_real_sizes(tiny: Path, tmp_path: Path) -> None:
    types = ["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "BF16", "Q3_K_M", "Q2_K"]
    p = plan(tiny, types)
    rep = quantize(tiny, tmp_path, types=types, verify=False)
    assert [t.file_bytes for t in p.types] == [o.bytes for o in rep.outputs]
    assert p.source_kind == "gguf" and p.mtp_layers == 1


def test_plan_lists_the_small_types_and_which_need_an_imatrix(tiny: Path, tmp_path: Path) -> None:
    """By default plan sizes Q2_K, IQ3_M, Q3_K_M and IQ4_XS too; IQ types are flagged (and quantize
    makes them only with an imatrix, whose keys plan allows for: sizes within that allowance)."""
    from qwythos.testing.imatrix import write_imatrix

    p = plan(tiny)
    assert [t.type for t in p.types] == list(PLAN_TYPES)
    assert list(PLAN_TYPES[:4]) == ["Q2_K", "IQ3_M", "Q3_K_M", "IQ4_XS"]
    need = {t.type for t in p.types if t.needs_imatrix}
    assert need == {"IQ3_M", "IQ4_XS"}
    assert any(n.startswith("IQ3_M, IQ4_XS: made only with an importance matrix") for n in p.notes)
    sizes = [t.file_bytes for t in p.types]
    assert sizes[:4] == sorted(sizes[:4]) and sizes[3] < sizes[4]  # smaller than Q4_K_M
    im = write_imatrix(tmp_path / "im.gguf", tiny, skip_head=False)
    rep = quantize(tiny, tmp_path / "q", types="IQ4_XS,IQ3_M", imatrix=im, verify=False)
    by_type = {t.type: t.file_bytes for t in p.types}
    for o in rep.outputs:
        assert 0 <= by_type[o.type] - o.bytes <= IMATRIX_KV_BYTES, o.type


def test_config_plan_matches_a_written_model(tiny_mtp_dir: Path, tiny: Path) -> None:
    """config.json -> sparse GGUF -> dry run: same tensor choices as the converted file."""
    from_cfg = plan(tiny_mtp_dir / "config.json", ["Q4_K_M", "Q8_0"], mtp=True)
    assert from_cfg.source_kind == "config"
    from_file = plan(tiny, ["Q4_K_M", "Q8_0"])
    for a, b in zip(from_cfg.types, from_file.types, strict=True):
        assert a.tensor_types == b.tensor_types
        assert a.weights_bytes == b.weights_bytes


def test_memory_terms(tiny_mtp_dir: Path) -> None:
    cfg = qwen35.text_config_from(json.loads((tiny_mtp_dir / "config.json").read_text()))
    assert (cfg.n_head_kv, cfg.head_dim, cfg.lin_v_heads, cfg.lin_k_dim, cfg.lin_v_dim) == (2, 64, 4, 32, 32)
    # 1 full-attention layer + 1 MTP layer, K and V, 2 heads x 64, f16
    assert kv_cache_bytes(cfg, 1000, "f16", 1) == 2 * 2 * 1000 * 2 * 64 * 2
    assert kv_cache_bytes(cfg, 1000, "q8_0", 0) == 2 * 1000 * (128 // 32) * 34
    # 3 linear layers: conv (k-1) x conv_dim + 4 heads x 32 x 32 state, f32
    assert cfg.conv_dim == 2 * 2 * 32 + 4 * 32
    assert recurrent_state_bytes(cfg) == 4 * 3 * (3 * cfg.conv_dim + 4 * 32 * 32)
    with pytest.raises(QwythosError):
        kv_cache_bytes(cfg, 10, "q5_1", 0)


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(QwythosError):
        plan(tmp_path / "nope.json")
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(QwythosError):
        plan(bad)
    with pytest.raises(QwythosError) as e:
        plan(bad, ["Q4_Z"])
    assert "Q4_K_M" in (e.value.hint or "")


def test_published_9b_sizes_within_1_percent() -> None:
    p = plan(REPO / "data" / "qwythos-9b-config.json", list(PUBLISHED_GIB))
    for t in p.types:
        assert abs(t.file_gib / PUBLISHED_GIB[t.type] - 1) < 0.01, (t.type, t.file_gib)
    assert p.n_layer == 32 and p.mtp_layers == 1
