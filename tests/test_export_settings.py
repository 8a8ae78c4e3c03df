"""The load settings every GGUF export writes (export/settings.py): one context and draft rule for
Ollama, LM Studio and KoboldCpp, from START_CONTEXT, DEFAULT_DRAFT and MAX_DRAFT."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from qwythos.core.drafting.lengths import DEFAULT_DRAFT, MAX_DRAFT
from qwythos.core.errors import QwythosError
from qwythos.core.model.release import START_CONTEXT
from qwythos.export.koboldcpp import export_koboldcpp
from qwythos.export.lmstudio import export_lmstudio
from qwythos.export.ollama import export_ollama
from qwythos.testing import stubs


def _ollama(gguf: Path, tmp: Path, ctx: int | None, draft: int | None) -> tuple[int, int]:
    r = export_ollama(gguf, tmp / "Modelfile", ctx=ctx, draft=draft, force=True)
    return r.num_ctx, r.draft


def _lmstudio(gguf: Path, tmp: Path, ctx: int | None, draft: int | None) -> tuple[int, int]:
    r = export_lmstudio(
        gguf, home=tmp / f"h{ctx}-{draft}", models_dir=tmp / "m", mode="symlink", context=ctx, draft=draft
    )
    return r.context, r.draft


def _koboldcpp(gguf: Path, tmp: Path, ctx: int | None, draft: int | None) -> tuple[int, int]:
    r = export_koboldcpp(gguf, tmp / "k.kcpps", contextsize=ctx, draft=draft, force=True)
    return json.loads(r.kcpps.read_text())["contextsize"], r.config.get("draftamount", 0)


EXPORTS: dict[str, Callable[[Path, Path, int | None, int | None], tuple[int, int]]] = {
    "Ollama": _ollama,
    "LM Studio": _lmstudio,
    "KoboldCpp": _koboldcpp,
}


@pytest.mark.parametrize("tool", EXPORTS)
def test_defaults_and_limits_are_the_same_everywhere(tool: str, tmp_path: Path) -> None:
    run = EXPORTS[tool]
    (tmp_path / "src").mkdir()
    head = stubs.write_stub_gguf(tmp_path / "src" / "head.gguf")
    trunk = stubs.write_stub_gguf(tmp_path / "src" / "trunk.gguf", nextn_layers=0, context_length=8192)
    assert run(head, tmp_path, None, None) == (START_CONTEXT, DEFAULT_DRAFT)
    assert run(trunk, tmp_path, None, None) == (8192, 0)  # the file's own context when smaller
    assert run(head, tmp_path, 65536, MAX_DRAFT) == (65536, MAX_DRAFT)
    assert run(head, tmp_path, None, 0)[1] == 0
    for draft in (-1, MAX_DRAFT + 1):
        with pytest.raises(QwythosError, match=f"--draft {draft} is out of range"):
            run(head, tmp_path, None, draft)
    with pytest.raises(QwythosError, match=f"no MTP .*so {tool} cannot draft"):
        run(trunk, tmp_path, None, 2)
    with pytest.raises(QwythosError, match="--ctx 8193 is outside .*8192 for trunk.gguf"):
        run(trunk, tmp_path, 8193, None)
