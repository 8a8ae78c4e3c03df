"""`qwythos demo` runs the whole job on the bundled trained model, offline, and reports it."""

from __future__ import annotations

import json
from pathlib import Path

from gguf import GGUFReader
from typer.testing import CliRunner

from qwythos.cli import app


def test_demo_end_to_end(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "-o", str(work), "--max-tokens", "24", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    steps = [f["step"] for f in rep["files"]]
    assert steps == ["convert (no head)", "quantize Q8_0", "quantize Q4_K_M", "mtp restore (BF16 head)"]
    for f in rep["files"]:
        assert Path(f["path"]).stat().st_size == f["bytes"] > 0
    sizes = {f["step"]: f["bytes"] for f in rep["files"]}
    assert sizes["quantize Q4_K_M"] < sizes["quantize Q8_0"] < sizes["convert (no head)"]
    trunk = GGUFReader(rep["files"][0]["path"])
    assert not any("nextn" in t.name for t in trunk.tensors)  # converted without the head
    full = GGUFReader(rep["files"][-1]["path"])
    assert int(full.fields["qwen35.nextn_predict_layers"].parts[-1][0]) == 1
    assert any(t.name == "blk.4.nextn.eh_proj.weight" for t in full.tensors)
    assert rep["validation_passed"] and rep["acceptance_per_depth"][0] > 0.4
    modes = ["--no-mtp", "plain", "mtp draft 1", "mtp draft 2", "mtp draft 3"]
    assert [r["mode"] for r in rep["runs"]] == modes
    assert rep["identical"] and all(r["gen_tokens"] > 0 for r in rep["runs"])
    assert all(r["tokens_per_pass"] > 1.2 for r in rep["runs"][2:])  # drafts really are accepted
    assert not list(work.glob("*.tmp*")) and not list(work.glob(".*"))  # nothing half-written left
