"""The vision projector (mmproj): conversion, its description, its size in `plan`, finding it.

The reference tests compare our file with llama.cpp's `convert_hf_to_gguf.py --mmproj` on every
fixture tower (the default one-block tower of the three text variants, a three-block tower, and a
wider tower whose FFN width is not a multiple of 32 and whose preprocessor_config.json carries
other image mean/std): same metadata keys, order, types and values (provenance general.* aside),
same tensor names, order, shapes, types and bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader

from qwythos.convert import mmproj as mm
from qwythos.core.errors import QwythosError
from qwythos.core.gguf.mmproj import check_pair, find_mmproj, read_mmproj_summary
from qwythos.testing import tiny
from qwythos.testing.gguf_compare import assert_same_gguf

F16, F32, BF16, Q8_0 = (
    GGMLQuantizationType.F16,
    GGMLQuantizationType.F32,
    GGMLQuantizationType.BF16,
    GGMLQuantizationType.Q8_0,
)


@pytest.fixture(scope="module")
def vision_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vision")
    return {v: tiny.build_tiny_checkpoint(root / v, variant=v) for v in tiny.VISION_VARIANTS}


@pytest.fixture(scope="module")
def qwythos_f16(tiny_qwythos_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mmproj") / "mmproj-tiny-F16.gguf"
    return mm.convert_mmproj(tiny_qwythos_dir, out).output


def _src(request, variant: str, vision_dirs: dict[str, Path]) -> Path:
    if variant in vision_dirs:
        return vision_dirs[variant]
    return request.getfixturevalue({"qwythos": "tiny_qwythos_dir", "mtp": "tiny_mtp_dir"}[variant])


# ---- what the file holds ------------------------------------------------------------------------


def test_f16_tensors_and_values(tiny_qwythos_dir: Path, qwythos_f16: Path) -> None:
    r = GGUFReader(qwythos_f16)
    t = {x.name: x for x in r.tensors}
    v = tiny.tiny_config("qwythos")["vision_config"]
    d, p = v["hidden_size"], v["patch_size"]
    assert len(t) == 9 + 1 + 12 * v["depth"]  # patch weight split in two
    conv = tiny.read_tensor(tiny_qwythos_dir, "model.visual.patch_embed.proj.weight")
    for name, k in (("v.patch_embd.weight", 0), ("v.patch_embd.weight.1", 1)):
        assert t[name].tensor_type == F16 and list(t[name].shape) == [p, p, 3, d]  # ggml order
        assert np.array_equal(np.asarray(t[name].data).reshape(d, 3, p, p), conv[:, :, k].astype(np.float16))
    for name in ("v.position_embd.weight", "v.post_ln.weight", "v.blk.0.ln1.bias", "mm.0.bias"):
        assert t[name].tensor_type == F32, name
    for name in ("v.blk.0.attn_qkv.weight", "v.blk.0.ffn_down.weight", "mm.0.weight", "mm.2.weight"):
        assert t[name].tensor_type == F16, name
    fc2 = tiny.read_tensor(tiny_qwythos_dir, "model.visual.merger.linear_fc2.weight")
    assert np.array_equal(np.asarray(t["mm.2.weight"].data), fc2.astype(np.float16))
    assert list(t["mm.2.weight"].shape) == [4 * d, 256]  # merger out = the text width
    kv = {f.name: f.contents() for f in r.fields.values() if not f.name.startswith("GGUF.")}
    assert kv["general.architecture"] == "clip" and kv["general.type"] == "mmproj"
    assert kv["clip.projector_type"] == "qwen3vl_merger" and kv["clip.has_vision_encoder"] is True
    assert kv["clip.vision.projection_dim"] == 256 and kv["clip.vision.block_count"] == v["depth"]
    assert kv["clip.vision.image_size"] == 128 and kv["clip.vision.patch_size"] == 16  # sqrt(64) * 16
    assert kv["clip.vision.image_mean"] == [0.5] * 3 and kv["general.file_type"] == 1


@pytest.mark.parametrize("kind", ["f32", "bf16", "q8_0"])
def test_types(kind: str, vision_dirs, tmp_path: Path) -> None:
    src = vision_dirs["vision-wide"]
    res = mm.convert_mmproj(src, tmp_path / "p.gguf", mmproj_type=kind)
    t = {x.name: x for x in GGUFReader(res.output).tensors}
    big = {"f32": F32, "bf16": BF16, "q8_0": Q8_0}[kind]
    assert t["v.patch_embd.weight"].tensor_type == F32  # f16 only in an f16 file
    assert t["v.blk.1.attn_qkv.weight"].tensor_type == big
    # FFN width 144 is not a multiple of 32: q8_0 keeps ffn_down (rows of 144) at f16, as llama.cpp
    assert t["v.blk.1.ffn_down.weight"].tensor_type == (F16 if kind == "q8_0" else big)
    assert t["v.blk.1.ffn_up.weight"].tensor_type == big
    assert bool(res.notes) == (kind == "q8_0")
    w = tiny.read_tensor(src, "model.visual.blocks.1.attn.qkv.weight")
    back = _dequant(t["v.blk.1.attn_qkv.weight"]).reshape(w.shape)
    tol = {"f32": 0, "bf16": 0, "q8_0": np.abs(w).max() / 127}[kind]  # the source is bf16: f32/bf16 exact
    assert np.abs(back - w).max() <= tol
    assert (
        res.bytes_written
        == res.output.stat().st_size
        == mm.projector_file_bytes(tiny.tiny_config("vision-wide"), kind, name=src.name)
    )


def _dequant(t) -> np.ndarray:
    from gguf.quants import dequantize

    return np.asarray(dequantize(np.asarray(t.data), t.tensor_type), dtype=np.float32).reshape(-1)


def test_vision_wide_reads_preprocessor_config(vision_dirs, tmp_path: Path) -> None:
    s = read_mmproj_summary(mm.convert_mmproj(vision_dirs["vision-wide"], tmp_path / "w.gguf").output)
    want = tiny.PREPROCESSOR_OVERRIDES["vision-wide"]
    assert np.allclose(s.image_mean, want["image_mean"]) and np.allclose(s.image_std, want["image_std"])
    assert (s.block_count, s.embedding_length, s.head_count, s.image_size) == (2, 96, 3, 96)


# ---- bad input ------------------------------------------------------------------------------------


def test_no_tower_config(tiny_qwythos_dir: Path, tmp_path: Path) -> None:
    cfg = tiny.tiny_config("no-mtp")
    del cfg["vision_config"]
    src = tiny.build_checkpoint_from_config(tmp_path / "text", cfg, include_mtp=False, with_tokenizer=False)
    with pytest.raises(QwythosError, match="no vision_config") as e:
        mm.convert_mmproj(src, tmp_path / "p.gguf")
    assert "without --mmproj" in e.value.hint and not (tmp_path / "p.gguf").exists()


def test_config_promises_tower_files_lack_it(tiny_qwythos_dir: Path, tmp_path: Path) -> None:
    cfg = tiny.tiny_config("qwythos")
    src = tmp_path / "text"
    tensors = {
        s.name: (s.shape, lambda s=s: tiny.random_tensor(s, 0))
        for s in tiny.tensor_specs(cfg, include_mtp=False)
        if not s.name.startswith("model.visual.")
    }
    tiny.write_checkpoint(src, cfg, tensors, tokenizer_from=tiny_qwythos_dir)
    with pytest.raises(QwythosError, match=r"no model\.visual\.\* tensors"):
        mm.convert_mmproj(src, tmp_path / "p.gguf")


def test_missing_preprocessor_config(tiny_qwythos_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(tiny_qwythos_dir, src)
    (src / "preprocessor_config.json").unlink()
    with pytest.raises(QwythosError, match="no preprocessor_config.json") as e:
        mm.convert_mmproj(src, tmp_path / "p.gguf")
    assert "Qwen/Qwen3.5-9B" in e.value.hint and not (tmp_path / "p.gguf").exists()


def test_bad_type_and_shape(tiny_qwythos_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(QwythosError, match="unknown --mmproj-type q4_0"):
        mm.convert_mmproj(tiny_qwythos_dir, tmp_path / "p.gguf", mmproj_type="q4_0")
    src = tmp_path / "src"
    shutil.copytree(tiny_qwythos_dir, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["vision_config"]["intermediate_size"] = 160
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(QwythosError, match=r"linear_fc1.bias has shape \[128\], config.json implies \[160\]"):
        mm.convert_mmproj(src, tmp_path / "p.gguf")


# ---- inspect, plan, find ----------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qwythos.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "COLUMNS": "400"},
    )


def test_cli_convert_and_inspect(tiny_qwythos_dir: Path, tmp_path: Path) -> None:
    model, proj = tmp_path / "m.gguf", tmp_path / "mmproj-m-Q8_0.gguf"
    p = _cli(
        "convert", str(tiny_qwythos_dir), "-o", str(model), "--mmproj", str(proj), "--mmproj-type", "q8_0"
    )
    assert p.returncode == 0, p.stderr
    assert "vision projector (mmproj)" in p.stdout and "qwen3vl_merger" in p.stdout
    assert GGUFReader(model).fields["general.architecture"].contents() == "qwen35"
    p = _cli("inspect", str(proj))
    assert p.returncode == 0, p.stderr
    for text in (
        "clip (vision projector, mmproj)",
        "ViT, 1 blocks, width 64",
        "128 px (position grid 8x8)",
        "Q8_0",
    ):
        assert text in p.stdout, text
    p = _cli("inspect", str(proj), "--json")
    d = json.loads(p.stdout)
    assert d["projection_dim"] == 256 and d["file_type"] == "Q8_0" and d["patch_size"] == 16
    assert sum(d["bytes_by_type"].values()) == sum(int(t.n_bytes) for t in GGUFReader(proj).tensors)


def test_cli_convert_without_preprocessor_fails_first(tiny_qwythos_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(tiny_qwythos_dir, src)
    (src / "preprocessor_config.json").unlink()
    p = _cli("convert", str(src), "-o", str(tmp_path / "m.gguf"), "--mmproj", str(tmp_path / "p.gguf"))
    assert p.returncode == 1 and "preprocessor_config.json" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "m.gguf").exists()  # refused before the text model was written


def test_plan_projector_size() -> None:
    cfg = json.loads((Path(__file__).parents[1] / "data" / "qwythos-9b-config.json").read_text())
    sizes = {t: mm.projector_file_bytes(cfg, t) for t in mm.MMPROJ_TYPES}
    # 9B tower: 27 blocks of width 1152, FFN 4304, merger 4608 -> 4096: ~459M parameters
    n = sum(int(np.prod(t.shape)) for t in mm.projector_tensors(mm.vision_config_from(cfg), "f32"))
    assert 455e6 < n < 460e6
    # f16 file: position embeddings and every 1-D tensor stay f32 (computed here from the 9B shapes)
    d, f = 1152, 4304
    n_f32 = 2304 * d + 27 * (4 * d + 3 * d + d + f + d) + d + 2 * d + 4 * d + 4096
    assert 0 < sizes["f32"] - 4 * n < 65536  # the header
    assert 0 < sizes["f16"] - (2 * (n - n_f32) + 4 * n_f32) < 65536
    assert sizes["q8_0"] < sizes["f16"] < sizes["bf16"] < sizes["f32"]  # bf16: patch weights stay f32


def test_plan_reports_projector(tiny_qwythos_dir: Path, qwythos_f16: Path) -> None:
    from qwythos.quantize.plan import plan

    p = plan(tiny_qwythos_dir, ["Q8_0"])
    assert p.mmproj_bytes == qwythos_f16.stat().st_size and p.mmproj_type == "f16"
    assert "config.json" in (p.mmproj_source or "")


def test_find_mmproj_and_pair(tiny_trunk_gguf: Path, qwythos_f16: Path, vision_dirs, tmp_path: Path) -> None:
    model = tmp_path / "Model-Q4_K_M.gguf"
    model.symlink_to(tiny_trunk_gguf)
    assert find_mmproj(model) is None
    shutil.copy(qwythos_f16, tmp_path / "mmproj-Model-F16.gguf")
    (tmp_path / "mmproj-notes.gguf").write_text("not a gguf")  # ignored: not a clip GGUF
    assert find_mmproj(model) == tmp_path / "mmproj-Model-F16.gguf"
    check_pair(model, read_mmproj_summary(tmp_path / "mmproj-Model-F16.gguf"))
    shutil.copy(qwythos_f16, tmp_path / "mmproj-Model-F16-copy.gguf")
    with pytest.raises(QwythosError, match="2 vision projectors") as e:
        find_mmproj(model)
    assert "--mmproj" in e.value.hint
    with pytest.raises(QwythosError, match="not a vision projector"):
        read_mmproj_summary(model)


def test_pair_refuses_other_width(tiny_trunk_gguf: Path, tmp_path: Path) -> None:
    cfg = tiny.tiny_config("qwythos")
    cfg["text_config"]["hidden_size"] = 128
    cfg["vision_config"]["out_hidden_size"] = 128
    src = tiny.build_checkpoint_from_config(tmp_path / "narrow", cfg, include_mtp=False, with_tokenizer=False)
    other = read_mmproj_summary(mm.convert_mmproj(src, tmp_path / "mmproj-narrow.gguf").output)
    with pytest.raises(QwythosError, match="projects images to width 128, but .* has embedding width 256"):
        check_pair(tiny_trunk_gguf, other)


# ---- llama.cpp's converter ----------------------------------------------------------------------------


REF_CASES = [
    ("qwythos", "f16"),
    ("qwythos", "bf16"),
    ("qwythos", "f32"),
    ("qwythos", "q8_0"),
    ("mtp", "f16"),
    ("vision-deep", "f16"),
    ("vision-wide", "f16"),
    ("vision-wide", "q8_0"),
]


@pytest.mark.reference
@pytest.mark.slow
@pytest.mark.parametrize("variant,kind", REF_CASES, ids=[f"{v}-{k}" for v, k in REF_CASES])
def test_matches_llama_cpp(request, vision_dirs, variant: str, kind: str, tmp_path: Path) -> None:
    from qwythos.testing import reference

    if not reference.reference_available():
        pytest.skip("llama.cpp source or torch not available")
    src = _src(request, variant, vision_dirs)
    ref = reference.run_reference_mmproj(src, tmp_path / "ref.gguf", kind)
    ours = mm.convert_mmproj(src, tmp_path / "ours.gguf", mmproj_type=kind).output
    assert_same_gguf(ours, ref)


def test_place_projector_beside_quants(
    tiny_qwythos_dir: Path, tiny_trunk_gguf: Path, qwythos_f16: Path, tmp_path
) -> None:
    out = tmp_path / "quants"
    out.mkdir()
    placed = mm.place_projector(tiny_qwythos_dir, out, "Tiny", mmproj_type="q8_0")
    assert placed.path == out / "mmproj-Tiny-Q8_0.gguf" and placed.how.startswith("converted")
    assert read_mmproj_summary(placed.path).file_type == "Q8_0"
    # a GGUF source brings the projector found beside it, as it is
    src = tmp_path / "src"
    src.mkdir()
    (src / "Tiny-BF16.gguf").symlink_to(tiny_trunk_gguf)
    assert mm.place_projector(src / "Tiny-BF16.gguf", out, "Tiny") is None
    shutil.copy(qwythos_f16, src / "mmproj-Tiny-F16.gguf")
    placed = mm.place_projector(src / "Tiny-BF16.gguf", out, "Tiny")
    assert placed.path.read_bytes() == qwythos_f16.read_bytes() and placed.how.startswith("copied")
    assert mm.place_projector(src / "Tiny-BF16.gguf", out, "Tiny").how == "already current"
    with pytest.raises(QwythosError, match="needs the checkpoint"):
        mm.place_projector(src / "Tiny-BF16.gguf", out, "Tiny", mmproj_type="q8_0")


# ---- exports ------------------------------------------------------------------------------------------


def test_export_ollama_second_from(mtp_gguf: Path, qwythos_f16: Path, tmp_path: Path) -> None:
    from qwythos.export.modelfile import parse_modelfile, to_request
    from qwythos.export.ollama import export_ollama

    r = export_ollama(mtp_gguf)
    assert r.mmproj_note is None and [ln for ln in r.text.splitlines() if ln.startswith("FROM ")] == [
        f"FROM ./{mtp_gguf.name}"
    ]
    proj = shutil.copy(qwythos_f16, mtp_gguf.parent / "mmproj-Qwythos-F16.gguf")
    r = export_ollama(mtp_gguf, force=True)
    assert r.mmproj_note == "vision projector: mmproj-Qwythos-F16.gguf (found beside the model)"
    froms = [line for line in r.text.splitlines() if line.startswith("FROM ")]
    assert froms == [f"FROM ./{mtp_gguf.name}", "FROM ./mmproj-Qwythos-F16.gguf"]
    req = to_request(parse_modelfile(r.text), mtp_gguf.parent)
    assert req.model_path == mtp_gguf and req.files == [Path(proj)]
    other = tmp_path / "elsewhere" / "vision.gguf"
    other.parent.mkdir()
    shutil.copy(qwythos_f16, other)
    r = export_ollama(mtp_gguf, force=True, mmproj=other)
    assert "FROM ./elsewhere/vision.gguf" in r.text and "(--mmproj)" in r.mmproj_note


def test_export_refuses_projector_of_other_width(tiny_trunk_gguf: Path, tmp_path: Path) -> None:
    from qwythos.export.koboldcpp import export_koboldcpp

    cfg = tiny.tiny_config("qwythos")
    cfg["text_config"]["hidden_size"] = 128
    cfg["vision_config"]["out_hidden_size"] = 128
    src = tiny.build_checkpoint_from_config(tmp_path / "narrow", cfg, include_mtp=False, with_tokenizer=False)
    other = mm.convert_mmproj(src, tmp_path / "mmproj-narrow.gguf").output
    model = tmp_path / "Tiny-BF16.gguf"
    model.symlink_to(tiny_trunk_gguf)
    with pytest.raises(QwythosError, match="belongs to another model"):
        export_koboldcpp(model, mmproj=other)


def test_export_lmstudio_places_projector(mtp_gguf: Path, qwythos_f16: Path, tmp_path: Path) -> None:
    from qwythos.export.lmstudio import export_lmstudio

    shutil.copy(qwythos_f16, mtp_gguf.parent / "mmproj-Qwythos-F16.gguf")
    r = export_lmstudio(mtp_gguf, home=tmp_path / "lms", models_dir=tmp_path / "models")
    assert (
        r.mmproj == r.dest.parent / "mmproj-Qwythos-F16.gguf"
        and r.mmproj.read_bytes() == qwythos_f16.read_bytes()
    )
    assert "vision: true" in r.yaml_text
    plain = tmp_path / "plain" / mtp_gguf.name
    plain.parent.mkdir()
    shutil.copy(mtp_gguf, plain)
    r = export_lmstudio(plain, home=tmp_path / "lms2", models_dir=tmp_path / "models2")
    assert r.mmproj is None and "vision: false" in r.yaml_text


def test_export_koboldcpp_mmproj_key(mtp_gguf: Path, qwythos_f16: Path) -> None:
    from qwythos.export.koboldcpp import export_koboldcpp

    proj = Path(shutil.copy(qwythos_f16, mtp_gguf.parent / "mmproj-Qwythos-F16.gguf"))
    r = export_koboldcpp(mtp_gguf)
    cfg = json.loads(r.kcpps.read_text())
    assert cfg["mmproj"] == str(proj.resolve()) and "found beside the model" in r.mmproj
    assert f"--mmproj {proj.resolve()}" in r.launch_command_flags


def test_upload_lists_projector_and_card(mtp_gguf: Path, qwythos_f16: Path) -> None:
    from qwythos.core.fileio import sha256_file
    from qwythos.export.upload import plan_upload

    folder = mtp_gguf.parent
    proj = Path(shutil.copy(qwythos_f16, folder / "mmproj-Qwythos-F16.gguf"))
    plan = plan_upload(folder, "someone/Qwythos-9B-GGUF", dry_run=True)
    assert proj.name in [i.path_in_repo for i in plan.items]
    readme = next(i for i in plan.items if i.path_in_repo == "README.md")
    text = (readme.data or b"").decode()
    assert f"--mmproj {proj.name}" in text and sha256_file(proj) in text and "F16 vision projector" in text
    modelfile = next(i for i in plan.items if i.path_in_repo == "Modelfile")
    assert f"FROM ./{proj.name}" in (modelfile.data or b"").decode()


@pytest.mark.parametrize("command", ["ollama", "lmstudio", "koboldcpp", "upload", "inspect"])
def test_every_header_is_read_once(
    command: str, mtp_gguf: Path, qwythos_f16: Path, tmp_path: Path, monkeypatch
) -> None:
    """The view is what is passed: an export (with a projector beside the model), an upload and
    inspect parse each GGUF's header once, however many facts they need from it."""
    from qwythos.commands.inspect import inspect
    from qwythos.core.gguf import file
    from qwythos.export.koboldcpp import export_koboldcpp
    from qwythos.export.lmstudio import export_lmstudio
    from qwythos.export.ollama import export_ollama
    from qwythos.export.upload import plan_upload

    proj = Path(shutil.copy(qwythos_f16, mtp_gguf.parent / "mmproj-Qwythos-F16.gguf"))
    reads: list[Path] = []
    start = file._Reader.__init__  # every header parse, whichever function asks for it

    def counted(self, f, path: Path, *rest) -> None:  # noqa: ANN001
        reads.append(Path(path))
        start(self, f, path, *rest)

    def inspect_both() -> None:
        inspect(proj, json_out=True)
        with pytest.raises(QwythosError, match="not a loadable"):  # the stub has no layers to load
            inspect(mtp_gguf, json_out=True)

    monkeypatch.setattr(file._Reader, "__init__", counted)
    {
        "ollama": lambda: export_ollama(mtp_gguf),
        "lmstudio": lambda: export_lmstudio(mtp_gguf, home=tmp_path / "lms", models_dir=tmp_path / "m"),
        "koboldcpp": lambda: export_koboldcpp(mtp_gguf),
        "upload": lambda: plan_upload(mtp_gguf.parent, "me/x", dry_run=True),
        "inspect": inspect_both,
    }[command]()
    assert sorted(reads) == sorted([mtp_gguf, proj])


# ---- quantize ------------------------------------------------------------------------------------------


def test_quantize_puts_projector_beside_quants(tiny_qwythos_dir: Path, tmp_path: Path) -> None:
    from qwythos.core.fileio import sha256_file
    from qwythos.quantize.pipeline import MANIFEST, SUMS, quantize

    out = tmp_path / "quants"
    report = quantize(tiny_qwythos_dir, out, types=["Q8_0"], mmproj_type="q8_0", verify=False)
    proj = next(out.glob("mmproj-*.gguf"))
    assert proj.name.endswith("-Q8_0.gguf") and read_mmproj_summary(proj).file_type == "Q8_0"
    assert any("vision projector" in n and proj.name in n for n in report.notes)
    sums = dict(line.split("  ")[::-1] for line in (out / SUMS).read_text().splitlines())
    assert sums[proj.name] == sha256_file(proj) and len(sums) == 2
    entry = json.loads((out / MANIFEST).read_text())["outputs"][proj.name]
    assert entry["type"] == "mmproj-Q8_0" and entry["bytes"] == proj.stat().st_size
    # a GGUF source brings the projector found beside it
    quant = next(p for p in out.glob("*.gguf") if not p.name.startswith("mmproj"))
    again = quantize(quant, tmp_path / "requant", types=["Q4_0"], requantize=True, verify=False)
    assert any("copied from" in n for n in again.notes)
    (copied,) = (tmp_path / "requant").glob("mmproj-*-Q8_0.gguf")
    assert copied.read_bytes() == proj.read_bytes()
