"""The converted model in llama.cpp gives the same next-token logits as transformers on the HF folder.

- The trained tiny model (data/tiny-trained) on real text, converted to F32: top-1 identical at
  every position, relative error at float level.
- The same at BF16: llama.cpp's CPU matmul rounds activations to bf16, so the error is at bf16 level
  and top-1 may flip only where transformers' own top-2 margin is a near-tie.
- The random fixture (vision tower, V-head reordering exercised) at BF16: the same bounds; random
  weights give more near-ties, which are reported, not compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.reference

N_TOKENS = 256
TRAINED = Path(__file__).resolve().parents[1] / "data" / "tiny-trained"
TEXT = Path(__file__).resolve().parents[1] / "data" / "calibration.txt"
NEAR_TIE = 0.02  # bf16 keeps 8 mantissa bits: a top-2 margin under ~2% of the logit scale is a tie


def _tokens(folder: Path) -> list[int]:
    cfg = json.loads((folder / "config.json").read_text())
    vocab = cfg.get("text_config", cfg)["vocab_size"]
    tj = json.loads((folder / "tokenizer.json").read_text())
    n_real = len(tj["model"]["vocab"])
    rng = np.random.default_rng(0)
    return rng.integers(0, min(n_real, vocab), size=N_TOKENS).tolist()


def _hf_logits(folder: Path, ids: list[int]) -> np.ndarray:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.Qwen3_5ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def _llama_logits(gguf: Path, ids: list[int]) -> np.ndarray:
    import llama_cpp

    from qwythos.core.llamacpp.probe import safe_model_kwargs

    m = llama_cpp.Llama(
        str(gguf), n_ctx=512, n_batch=512, logits_all=True, verbose=False, n_threads=2, **safe_model_kwargs()
    )
    try:
        m.eval(ids)
        return np.array(m.scores[: len(ids)], dtype=np.float32)
    finally:
        m.close()


def _text_tokens(folder: Path, n: int = 300) -> list[int]:
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    return tok.encode(TEXT.read_text(encoding="utf-8")).ids[:n]


def _compare(got: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(relative L2 error per position, top-1 agreement, decisive positions)."""
    assert got.shape == ref.shape
    rel = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
    top = np.sort(ref, axis=1)
    decisive = (top[:, -1] - top[:, -2]) / np.abs(ref).max(axis=1) > NEAR_TIE
    agree = got.argmax(axis=1) == ref.argmax(axis=1)
    print(
        f"rel L2 max {rel.max():.5f} mean {rel.mean():.5f}; top-1 {agree.mean():.4f}; decisive {decisive.sum()}"
    )
    return rel, agree, decisive


@pytest.fixture(scope="module")
def trained_reference() -> tuple[list[int], np.ndarray]:
    ids = _text_tokens(TRAINED)
    return ids, _hf_logits(TRAINED, ids)


@pytest.mark.slow
def test_trained_f32_top1_at_every_position(trained_reference, tmp_path: Path) -> None:
    from qwythos.convert.text import convert

    ids, ref = trained_reference
    assert len(ids) >= 256
    gguf = convert(TRAINED, tmp_path / "t-F32.gguf", outtype="f32").output
    rel, agree, _ = _compare(_llama_logits(gguf, ids), ref)
    assert agree.all(), f"top-1 differs at {np.where(~agree)[0].tolist()}"
    assert rel.max() < 5e-3


@pytest.mark.slow
def test_trained_bf16_at_bf16_level(trained_reference, rt_trained_gguf: Path) -> None:
    ids, ref = trained_reference
    rel, agree, decisive = _compare(_llama_logits(rt_trained_gguf, ids), ref)
    assert rel.max() < 0.02 and rel.mean() < 0.005
    assert agree.mean() >= 0.99
    assert agree[decisive].all(), f"top-1 differs at decisive {np.where(decisive & ~agree)[0].tolist()}"


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["tiny_mtp_dir", "tiny_nomtp_dir", "tiny_qwythos_dir"])
def test_random_fixtures_bf16_at_bf16_level(variant: str, request, tmp_path: Path) -> None:
    from qwythos.convert.text import convert

    folder = request.getfixturevalue(variant)
    gguf = convert(folder, tmp_path / "f-BF16.gguf").output
    ids = _tokens(folder)
    rel, agree, decisive = _compare(_llama_logits(gguf, ids), _hf_logits(folder, ids))
    assert rel.max() < 0.05 and rel.mean() < 0.02
    assert decisive.sum() >= 0.6 * len(ids)
    assert agree[decisive].all(), f"top-1 differs at decisive {np.where(decisive & ~agree)[0].tolist()}"
