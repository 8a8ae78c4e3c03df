"""Per-tensor plain CPU buffers (core/llamacpp/repack.py) on a real Q4_0 file: the named tensors stay
out of llama.cpp's repacked buffer, the others are repacked, and the logits do not change."""

from __future__ import annotations

import re

import numpy as np
import pytest

from qwythos.core.llamacpp import log, repack
from qwythos.core.llamacpp.handles import Model, _init_backend, _load_handle, read_model_info


@pytest.fixture(scope="module")
def q4_0_gguf(trained_ggufs, tmp_path_factory):
    """The trained tiny model in Q4_0: its matrices (rows a multiple of 8) repack on x86 AVX2 and ARM."""
    from qwythos.quantize.pipeline import quantize

    out = tmp_path_factory.mktemp("repack")
    quantize(trained_ggufs["full"], out, types=["Q4_0"], verify=False)
    (path,) = out.glob("*Q4_0*.gguf")
    return path


def _load(path, **kw) -> tuple[Model, set[str]]:
    """The model, and the tensors llama.cpp says it repacked."""
    info = read_model_info(path)
    _init_backend()
    with log.llama_log_captured() as pieces:
        handle = _load_handle(info, load_mtp=False, n_gpu_layers=0, **kw)
    return Model(info, handle, False), set(re.findall(r"repack tensor (\S+) with", "".join(pieces)))


def _logits(model: Model) -> np.ndarray:
    ctx = model.new_target(64, threads=1)
    try:
        ctx.decode(model.tokenize("def fibonacci(n):\n    return"), 0, outputs="all")
        return ctx.logits(4).copy()
    finally:
        ctx.close()


def test_the_plain_type_is_a_checked_copy_of_the_cpu_type():
    _init_backend()
    lib = repack._bind()
    plain = repack.plain_cpu_buffer_type()
    assert plain is not None and plain != lib.ggml_backend_cpu_buffer_type()
    assert lib.ggml_backend_buft_name(plain) == b"CPU" and lib.ggml_backend_buft_is_host(plain)
    assert repack.plain_overrides([]) is None
    table = repack.plain_overrides(["a", "b"])
    assert [e.pattern for e in table] == [b"a", b"b", None] and table[0].buft == plain


def test_named_tensors_stay_plain_and_the_logits_do_not_change(q4_0_gguf):
    model, repacked_all = _load(q4_0_gguf)
    if not repacked_all:
        model.close()
        pytest.skip("this CPU repacks no Q4_0 weights (no AVX2, NEON dot product or RVV)")
    with model:
        want = _logits(model)
    ffn_down = {t for t in repacked_all if t.endswith(".ffn_down.weight")}
    assert ffn_down, repacked_all
    model, repacked = _load(q4_0_gguf, plain=(r"\.ffn_down\.weight$",))
    with model:
        assert repacked == repacked_all - ffn_down
        np.testing.assert_allclose(_logits(model), want, rtol=0, atol=1e-4 * np.abs(want).max())
    model, repacked = _load(q4_0_gguf, repacked=False, plain=(r"\.ffn_down\.weight$",))
    with model:
        assert repacked == set()
