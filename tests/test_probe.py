"""The AMX crash probe behind `qwythos doctor`: real build, and a simulated crashing build."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qwythos.core.llamacpp import probe


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QWYTHOS_CACHE", str(tmp_path / "cache"))


def test_installed_build_survives_a_quantized_batch():
    result = probe.probe_build(use_cache=False)
    assert result.runs[0].use_extra_bufts is True
    assert result.default_ok, result.runs
    assert result.model_kwargs() == {}
    assert result.verdict == "ok"


def _fake_python(tmp_path: Path, crash_when: str) -> str:
    """A python that dies by SIGILL when the probe child is asked for `crash_when` buffers."""
    script = tmp_path / "python"
    script.write_text(
        f'#!/bin/sh\ncase "$2" in *"{crash_when}"*) kill -ILL $$ ;; esac\nexec {sys.executable} "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_crash_with_amx_buffers_falls_back_to_plain_buffers(tmp_path):
    result = probe.probe_build(use_cache=False, python=_fake_python(tmp_path, ", True)"))
    assert [r.use_extra_bufts for r in result.runs] == [True, False]
    assert result.runs[0].signal == "SIGILL"
    assert not result.default_ok and result.fallback_ok
    assert result.model_kwargs() == {"use_extra_bufts": False}


def test_crash_everywhere_is_reported(tmp_path):
    result = probe.probe_build(use_cache=False, python=_fake_python(tmp_path, "_child("))
    assert result.verdict == "crashes"
    assert result.model_kwargs() == {}


def test_verdict_is_cached_per_build(tmp_path):
    first = probe.probe_build(use_cache=True, python=_fake_python(tmp_path, ", True)"))
    again = probe.probe_build(use_cache=True)  # the real python would pass: the cache answers
    assert again.verdict == first.verdict != "ok"


def test_doctor_cli_json(tmp_path):
    env = {**os.environ, "QWYTHOS_CACHE": str(tmp_path / "c")}
    out = subprocess.run(
        [sys.executable, "-m", "qwythos.cli", "doctor", "--json", "--fresh"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    data = json.loads(out.stdout)
    assert data["verdict"] == "ok" and data["model_kwargs"] == {}


# ---- batched logits on the real file (the repacked-kernel fault seen at the 9B shapes) ---------
def test_logits_agree():
    from qwythos.core.llamacpp.probe import logits_agree

    rng = np.random.default_rng(0)
    single = rng.standard_normal((4, 1000)).astype(np.float32) * 5
    assert logits_agree(single + 0.05, single)  # kernel rounding
    zero = single.copy()
    zero[2] = 0
    assert not logits_agree(zero, single)  # the fault's signature
    assert not logits_agree(single + np.nan, single)
    assert not logits_agree(single[::-1].copy(), single)  # other rows entirely


def test_batched_check_passes_on_the_tiny_model(rt_trained_model):
    from qwythos.core.llamacpp.handles import check_batched_logits

    assert check_batched_logits(rt_trained_model, threads=1)


def test_failed_batched_check_reloads_without_repacked_weights(rt_trained_gguf, tmp_path, monkeypatch):
    """A file whose batched logits disagree even with the suspect weights plain loads again with
    use_extra_bufts=False, says so once per load, and later loads take the cached verdict without
    checking again."""
    import qwythos.core.llamacpp.handles as L
    from qwythos.core.llamacpp import probe

    monkeypatch.setenv("QWYTHOS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("QWYTHOS_SKIP_PROBE", raising=False)
    calls = []
    monkeypatch.setattr(
        L,
        "check_batched_logits",
        lambda m, threads=None: calls.append((m.repacked, m.plain_weights)) or False,
    )
    with pytest.warns(RuntimeWarning, match="repacked CPU kernels return wrong logits"):
        m = L.load_model(rt_trained_gguf)
    assert calls == [(True, ()), (True, L.SUSPECT_WEIGHTS)] and m.repacked is False
    assert m.tokenize("def") and m.has_mtp
    m.close()
    assert probe.batched_verdict(rt_trained_gguf) is False
    assert probe.batched_failures() == {str(rt_trained_gguf.resolve()): False}  # what `doctor` lists
    with pytest.warns(RuntimeWarning, match="without them"):
        m = L.load_model(rt_trained_gguf)
    assert len(calls) == 2 and m.repacked is False  # cached: no third check, no double load
    m.close()


def test_a_check_that_fails_only_with_the_suspect_weights_repacked_keeps_the_rest(
    rt_trained_gguf, tmp_path, monkeypatch
):
    """The narrowed fallback: only the suspect weights lose repacking, the verdict (their patterns)
    is cached per file, and later loads use it without checking."""
    import qwythos.core.llamacpp.handles as L
    from qwythos.core.llamacpp import probe

    monkeypatch.setenv("QWYTHOS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("QWYTHOS_SKIP_PROBE", raising=False)
    calls = []
    monkeypatch.setattr(
        L,
        "check_batched_logits",
        lambda m, threads=None: calls.append(m.plain_weights) or bool(m.plain_weights),
    )
    with pytest.warns(RuntimeWarning, match=r"\(ssm_out\.weight\); loading those weights without them"):
        m = L.load_model(rt_trained_gguf)
    assert calls == [(), L.SUSPECT_WEIGHTS]
    assert m.repacked and m.plain_weights == L.SUSPECT_WEIGHTS and m.has_mtp
    m.close()
    assert probe.batched_verdict(rt_trained_gguf) == L.SUSPECT_WEIGHTS
    assert probe.batched_failures() == {str(rt_trained_gguf.resolve()): L.SUSPECT_WEIGHTS}
    with pytest.warns(RuntimeWarning, match="ssm_out"):
        m = L.load_model(rt_trained_gguf)
    assert len(calls) == 2 and m.plain_weights == L.SUSPECT_WEIGHTS
    m.close()


def test_a_damaged_verdict_means_checking_again(rt_trained_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("QWYTHOS_CACHE", str(tmp_path / "cache"))
    probe.record_batched_verdict(rt_trained_gguf, ("x",))
    cache = probe._batch_cache()
    for bad in ([], [1], "yes", None, {"a": 1}):
        data = json.loads(cache.read_text())
        data[probe._batch_key(rt_trained_gguf)] = bad
        cache.write_text(json.dumps(data))
        assert probe.batched_verdict(rt_trained_gguf) is None


def test_empty_verify_rows_stop_with_a_message(rt_trained_gguf, tmp_path, monkeypatch):
    """Zero logit rows in a verify batch never become tokens: one message, and the file is marked
    so that the next load avoids the repacked weights."""
    import qwythos.core.llamacpp.handles as L
    from qwythos.core.errors import QwythosError
    from qwythos.core.llamacpp import probe
    from qwythos.runtime.speculative import generate

    monkeypatch.setenv("QWYTHOS_CACHE", str(tmp_path / "cache"))
    real = L.Context.logits

    def broken(self, n_rows):
        out = real(self, n_rows)
        return np.zeros_like(out) if self.kind == "target" and n_rows >= 2 else out

    with L.load_model(rt_trained_gguf) as m:
        assert m.repacked
        monkeypatch.setattr(L.Context, "logits", broken)
        with pytest.raises(QwythosError, match="empty logits for a batch of 3 rows"):
            generate(m, m.tokenize("def main():"), max_tokens=16, draft=2, threads=1, costs=None)
    assert probe.batched_verdict(rt_trained_gguf) is False
