"""The AMX crash probe behind `qwythos doctor`: real build, and a simulated crashing build."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from qwythos.core import probe


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


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
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "c")}
    out = subprocess.run(
        [sys.executable, "-m", "qwythos.cli", "doctor", "--json", "--fresh"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    data = json.loads(out.stdout)
    assert data["verdict"] == "ok" and data["model_kwargs"] == {}
