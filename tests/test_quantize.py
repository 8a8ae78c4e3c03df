"""qwythos quantize on a tiny qwen35 GGUF: every type produced, verified, recorded; every refusal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType

from qwythos.core.errors import QwythosError
from qwythos.core.gguf.file import read_header
from qwythos.core.gguf.ftypes import ftypes, parse_ftype, parse_ggml_type
from qwythos.quantize.llama_quant import load_imatrix
from qwythos.quantize.pipeline import MANIFEST, SUMS, quantize, sha256_file
from qwythos.quantize.source import file_fingerprint, open_source
from qwythos.testing.imatrix import write_imatrix

# ---------------------------------------------------------------- fixtures (conftest: tiny_mtp_gguf, tiny_mtp_dir)
# tiny_mtp_gguf is the converter's BF16 GGUF of the tiny random checkpoint (hidden 256, 4 layers, a
# real MTP head at blk.4), so every k-quant applies to it without llama.cpp's shape fallbacks.


def _byte_tokens() -> list[str]:
    """GPT-2 byte-level token strings (used by bench/bench_quantize_9b.py for its random 9B GGUF)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


@pytest.fixture(scope="module")
def tiny_gguf(tiny_mtp_gguf: Path) -> Path:
    return tiny_mtp_gguf


@pytest.fixture(scope="module")
def five(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("q")
    return out, quantize(tiny_gguf, out, types="Q4_K_M,Q5_K_M,Q6_K,Q8_0,BF16", threads=2)


# ---------------------------------------------------------------- type tables


def test_ftype_table_matches_binding() -> None:
    import llama_cpp

    t = ftypes()
    assert t["Q4_K_M"].id == llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert t["Q4_K_M"].default_type.name == "q4_K"
    assert t["IQ2_M"].default_type.name == "iq2_s"
    assert t["Q8_0"].nominal_bpw == 8.5 and t["BF16"].nominal_bpw == 16
    assert parse_ftype("q4_k").name == "Q4_K_M"
    assert t["IQ2_XS"].needs_imatrix and not t["Q4_K_M"].needs_imatrix


def test_unknown_type_lists_valid_ones(tiny_gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(QwythosError) as e:
        quantize(tiny_gguf, tmp_path, types="Q4_K_M,Q4_X")
    assert "Q4_X" in e.value.message and "Q5_K_M" in (e.value.hint or "")
    with pytest.raises(QwythosError) as e:
        parse_ggml_type("q9_9")
    assert "q8_0" in (e.value.hint or "")
    assert not list(tmp_path.glob("*.gguf"))


# ---------------------------------------------------------------- the five files


def test_every_type_produced_verified_recorded(tiny_gguf: Path, five) -> None:
    out, rep = five
    assert [o.type for o in rep.outputs] == ["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "BF16"]
    sizes = [o.bytes for o in rep.outputs]
    assert sizes == sorted(sizes)  # more bits, bigger file
    for o in rep.outputs:
        p = Path(o.path)
        assert p.name == f"tiny-mtp-{o.type}.gguf" and p.stat().st_size == o.bytes
        assert o.verified["decoded_tokens"] == 4
        assert read_header(p).kv["general.file_type"] == parse_ftype(o.type).id
        assert sha256_file(p) == o.sha256
    sums = (out / SUMS).read_text().split("\n")
    assert f"{rep.outputs[0].sha256}  tiny-mtp-Q4_K_M.gguf" in sums
    man = json.loads((out / MANIFEST).read_text())
    e = man["outputs"]["tiny-mtp-Q6_K.gguf"]  # keyed by file name: two models can share a folder
    assert e["bytes"] == rep.outputs[2].bytes and e["source_fingerprint"] == rep.source_fingerprint
    assert "llama-cpp-python 0.3.36" in e["tool_version"]
    assert not list(out.glob("*.partial"))


def test_mtp_block_keeps_its_type(five) -> None:
    """Default --mtp-type q8_0: the whole MTP block (nextn.* and its decoder block) at q8_0."""
    _, rep = five
    q4 = read_header(Path(rep.outputs[0].path))
    types = {t.name: t.ggml_type for t in q4.tensors}
    assert types["blk.4.nextn.eh_proj.weight"] == GGMLQuantizationType.Q8_0
    assert types["blk.4.ffn_down.weight"] == GGMLQuantizationType.Q8_0
    assert types["blk.4.attn_norm.weight"] == GGMLQuantizationType.F32
    assert types["blk.0.ffn_up.weight"] == GGMLQuantizationType.Q4_K
    assert rep.outputs[0].mtp_type == "q8_0"
    bf16 = read_header(Path(rep.outputs[-1].path))  # BF16 output: nothing quantized, head included
    assert {t.name: t.ggml_type for t in bf16.tensors}["blk.4.ffn_down.weight"] == GGMLQuantizationType.BF16


def test_mtp_type_bf16_same_and_any_ggml_type(tiny_gguf: Path, tmp_path: Path) -> None:
    def head(mtp_type: str, sub: str) -> dict[str, int]:
        rep = quantize(tiny_gguf, tmp_path / sub, types="Q4_K_M", mtp_type=mtp_type, verify=False)
        return {x.name: x.ggml_type for x in read_header(Path(rep.outputs[0].path)).tensors}

    assert head("bf16", "a")["blk.4.nextn.eh_proj.weight"] == GGMLQuantizationType.BF16
    assert head("same", "b")["blk.4.nextn.eh_proj.weight"] == GGMLQuantizationType.Q4_K
    t = head("Q4_0", "c")
    assert t["blk.4.attn_q.weight"] == GGMLQuantizationType.Q4_0
    assert t["blk.3.attn_q.weight"] == GGMLQuantizationType.Q4_K
    with pytest.raises(QwythosError) as e:
        quantize(tiny_gguf, tmp_path / "d", types="Q4_K_M", mtp_type="q9")
    assert "--mtp-type" in e.value.message and "same" in (e.value.hint or "")


def test_rerun_skips_current_outputs(tiny_gguf: Path, five) -> None:
    out, rep = five
    before = Path(rep.outputs[0].path).stat().st_mtime_ns
    again = quantize(tiny_gguf, out, types="Q4_K_M,Q8_0", threads=2, verify=False)
    assert all(o.skipped for o in again.outputs)
    assert Path(rep.outputs[0].path).stat().st_mtime_ns == before
    changed = quantize(tiny_gguf, out, types="Q4_K_M", mtp_type="bf16", verify=False)
    assert not changed.outputs[0].skipped  # other parameters: redone


def test_hf_folder_source_converted_once(tiny_mtp_dir: Path, tmp_path: Path) -> None:
    """An HF folder is converted to <name>-BF16.gguf first; a rerun reuses that intermediate."""
    rep = quantize(tiny_mtp_dir, tmp_path, types="Q8_0", verify=False)
    inter = Path(rep.source_gguf)
    assert rep.converted and inter == tmp_path / f"{tiny_mtp_dir.name}-BF16.gguf"
    hdr = read_header(inter)
    assert hdr.kv["general.file_type"] == parse_ftype("BF16").id
    assert "blk.4.nextn.eh_proj.weight" in {t.name for t in hdr.tensors}
    out = Path(rep.outputs[0].path)
    assert out.name == f"{tiny_mtp_dir.name}-Q8_0.gguf"
    assert read_header(out).kv["general.file_type"] == parse_ftype("Q8_0").id
    stamp = inter.stat().st_mtime_ns, out.stat().st_mtime_ns
    again = quantize(tiny_mtp_dir, tmp_path, types="Q8_0", verify=False)
    assert not again.converted and any("reused the BF16 intermediate" in n for n in again.notes)
    assert again.outputs[0].skipped and again.source_fingerprint == rep.source_fingerprint
    assert (inter.stat().st_mtime_ns, out.stat().st_mtime_ns) == stamp


# ---------------------------------------------------------------- refusals


def test_refuses_quantized_input_unless_requantize(five, tmp_path: Path) -> None:
    _, rep = five
    q8 = Path(rep.outputs[3].path)
    with pytest.raises(QwythosError) as e:
        quantize(q8, tmp_path, types="Q4_K_M")
    assert "already quantized" in e.value.message and "--requantize" in (e.value.hint or "")
    r = quantize(q8, tmp_path, types="Q4_K_M", requantize=True, verify=False)
    assert r.outputs[0].bytes > 0


def test_refuses_other_architecture(tmp_path: Path) -> None:
    import gguf

    p = tmp_path / "llama.gguf"
    w = gguf.GGUFWriter(str(p), arch="llama")
    w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(QwythosError) as e:
        quantize(p, tmp_path / "o", types="Q8_0")
    assert "'llama'" in e.value.message and str(p) in e.value.message


def test_not_enough_disk_checked_first(tiny_gguf: Path, tmp_path: Path, monkeypatch) -> None:
    import shutil
    from collections import namedtuple

    du = namedtuple("du", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: du(10**9, 10**9, 1000))
    with pytest.raises(QwythosError) as e:
        quantize(tiny_gguf, tmp_path, types="Q4_K_M,Q8_0")
    assert "not enough disk space" in e.value.message
    assert not list(tmp_path.glob("*.gguf*"))


def test_interrupted_run_leaves_no_partial_and_resumes(tiny_gguf: Path, tmp_path: Path) -> None:
    def stop(tname: str, done: int, total: int) -> None:
        if tname == "Q8_0" and done > 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        quantize(tiny_gguf, tmp_path, types="Q4_K_M,Q8_0", progress=stop, verify=False)
    assert (tmp_path / "tiny-mtp-Q4_K_M.gguf").is_file()
    assert not (tmp_path / "tiny-mtp-Q8_0.gguf").exists() and not list(tmp_path.glob("*.partial"))
    rep = quantize(tiny_gguf, tmp_path, types="Q4_K_M,Q8_0", verify=False)
    assert [o.skipped for o in rep.outputs] == [True, False]


# ---------------------------------------------------------------- imatrix


@pytest.mark.parametrize("legacy", [False, True])
def test_imatrix_both_formats_load_identically(tiny_gguf: Path, tmp_path: Path, legacy: bool) -> None:
    p = write_imatrix(tmp_path / ("im.dat" if legacy else "im.gguf"), tiny_gguf, legacy=legacy)
    im = load_imatrix(p)
    assert im.legacy is legacy
    assert "blk.0.ffn_up.weight" in im.entries and not any(k.startswith("blk.4.") for k in im.entries)
    v = im.entries["blk.0.ffn_up.weight"]
    assert v.shape == (256,) and 5 <= v.min() and v.max() <= 15  # sums / counts: the per-column mean


@pytest.mark.parametrize("types", ["IQ2_XS", "Q4_K_M,IQ4_XS", "IQ3_M"])
def test_iq_type_needs_imatrix(tiny_gguf: Path, tmp_path: Path, types: str) -> None:
    """Every IQ type (IQ4_XS and IQ3_M too, which llama.cpp itself would make blind) is refused
    without an importance matrix, before any work, naming the types and --imatrix auto."""
    with pytest.raises(QwythosError) as e:
        quantize(tiny_gguf, tmp_path, types=types)
    iq = [t for t in types.split(",") if t.startswith("IQ")]
    assert e.value.message.startswith(", ".join(iq)) and "importance matrix" in e.value.message
    assert "--imatrix auto" in (e.value.hint or "") and "qwythos imatrix" in (e.value.hint or "")
    assert not list(tmp_path.glob("*.gguf"))
    assert not parse_ftype("Q3_K_M").needs_imatrix and not parse_ftype("Q2_K").needs_imatrix


@pytest.mark.parametrize("mtp_type", ["bf16", "same"])
def test_iq_type_with_headless_imatrix(tiny_gguf: Path, tmp_path: Path, mtp_type: str) -> None:
    im = write_imatrix(tmp_path / "im.gguf", tiny_gguf)
    rep = quantize(tiny_gguf, tmp_path / "o", types="IQ2_XS", imatrix=im, mtp_type=mtp_type)
    o = rep.outputs[0]
    assert o.verified["decoded_tokens"] == 4
    hdr = read_header(Path(o.path))
    t = {x.name: x.ggml_type for x in hdr.tensors}
    assert t["blk.0.ffn_up.weight"] == GGMLQuantizationType.IQ2_XS
    want = GGMLQuantizationType.BF16 if mtp_type == "bf16" else GGMLQuantizationType.Q8_0
    assert t["blk.4.nextn.eh_proj.weight"] == want
    assert hdr.kv["quantize.imatrix.entries_count"] == len(load_imatrix(im).entries)
    notes = [n for n in rep.notes if "no data for the MTP head" in n]
    assert (mtp_type == "same") == bool(notes)
    assert all("qwythos imatrix" in n for n in notes)


def test_iq_head_with_a_covering_imatrix_and_refused_without(tiny_gguf: Path, tmp_path: Path) -> None:
    """An IQ type for the head needs the head's own data: allowed with an imatrix that covers the
    head (`qwythos imatrix`'s), refused by name with one that does not (llama-imatrix's)."""
    covering = write_imatrix(tmp_path / "all.gguf", tiny_gguf, skip_head=False)
    headless = write_imatrix(tmp_path / "trunk.gguf", tiny_gguf)
    for mtp_type in ("same", "iq4_xs"):
        rep = quantize(
            tiny_gguf, tmp_path / mtp_type, types="IQ4_XS", imatrix=covering, mtp_type=mtp_type, verify=False
        )
        t = {x.name: x.ggml_type for x in read_header(Path(rep.outputs[0].path)).tensors}
        assert t["blk.4.nextn.eh_proj.weight"] == GGMLQuantizationType.IQ4_XS, mtp_type
        assert t["blk.4.attn_q.weight"] == GGMLQuantizationType.IQ4_XS
        assert rep.imatrix["covers_head"] and not any("MTP head" in n for n in rep.notes)
    for im in (headless, None):
        with pytest.raises(QwythosError) as e:
            quantize(tiny_gguf, tmp_path / "x", types="Q4_K_M", imatrix=im, mtp_type="iq4_xs")
        assert "--mtp-type iq4_xs needs importance data for the MTP head" in e.value.message
        assert "qwythos imatrix" in (e.value.hint or "") and "--mtp-type q8_0" in (e.value.hint or "")
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").glob("*.gguf"))


@pytest.fixture()
def own_copy(tiny_gguf: Path, tmp_path: Path) -> Path:
    """The tiny GGUF in a folder of this test's (--imatrix auto writes beside its source)."""
    import shutil

    d = tmp_path / "src"
    d.mkdir()
    return Path(shutil.copy2(tiny_gguf, d / tiny_gguf.name))


@pytest.fixture(scope="module")
def short_calib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 512-token chunks' worth of the bundled calibration text (the tiny vocabulary's tokens)."""
    from qwythos.quantize.imatrix import CALIBRATION

    p = tmp_path_factory.mktemp("calib") / "calib-short.txt"
    p.write_text(CALIBRATION.read_text()[:5000])
    return p


def test_imatrix_auto_computed_once_then_reused(own_copy: Path, short_calib: Path, tmp_path: Path) -> None:
    from qwythos.quantize.imatrix_auto import cache_key, cached_paths

    kw = dict(types="Q4_K_M", imatrix="auto", calib=short_calib, verify=False, threads=2)
    rep = quantize(own_copy, tmp_path / "q", **kw)
    rec = rep.imatrix
    im = Path(rec["file"])
    assert rec["auto"] and rec["computed"] and rec["covers_head"]
    assert im.parent == own_copy.parent and im.name.startswith("tiny-mtp-BF16.imatrix-")
    assert rec["calibration"] == ["calib-short.txt"] and rec["chunks"] == load_imatrix(im).chunk_count >= 1
    assert rec["sha256"] == sha256_file(im) and rec["calibration_sha256"] == sha256_file(short_calib)
    man = json.loads((tmp_path / "q" / MANIFEST).read_text())
    assert man["outputs"]["tiny-mtp-Q4_K_M.gguf"]["imatrix"] == rec
    assert any("importance matrix computed" in n for n in rep.notes)
    stamp = im.stat().st_mtime_ns

    again = quantize(own_copy, tmp_path / "q", **kw)  # same source and text: reused, not recomputed
    assert not again.imatrix["computed"] and again.imatrix["file"] == str(im)
    assert im.stat().st_mtime_ns == stamp and again.outputs[0].skipped
    assert any("reused" in n for n in again.notes)

    other = tmp_path / "other.txt"  # another text: another key, another file
    other.write_text(short_calib.read_text()[::-1])
    key = cache_key(file_fingerprint(own_copy), sha256_file(other))
    assert cached_paths(open_source(own_copy), key)[0] != im


def test_imatrix_auto_in_the_cache_when_the_source_folder_is_read_only(
    own_copy: Path, short_calib: Path, tmp_path: Path, monkeypatch
) -> None:
    import qwythos.quantize.imatrix_auto as auto
    from qwythos.core.fileio import cache_dir

    monkeypatch.setattr(auto, "_writable", lambda folder: folder != own_copy.parent)
    rep = quantize(own_copy, tmp_path / "q", types="Q4_K_M", imatrix="auto", calib=short_calib, verify=False)
    im = Path(rep.imatrix["file"])
    assert im.parent == cache_dir("imatrix") and im.is_file()
    assert sorted(p.name for p in own_copy.parent.iterdir()) == [own_copy.name]


def test_calib_without_imatrix_auto_is_refused(tiny_gguf: Path, short_calib: Path, tmp_path: Path) -> None:
    with pytest.raises(QwythosError) as e:
        quantize(tiny_gguf, tmp_path, types="Q4_K_M", calib=short_calib)
    assert "--calib" in e.value.message and "--imatrix auto" in (e.value.hint or "")


def _with_nan_output_norm(src: Path, dst: Path) -> Path:
    """A copy of `src` whose output_norm.weight is all NaN (it parses; it computes NaN)."""
    import shutil

    from gguf import GGUFReader

    shutil.copyfile(src, dst)
    t = next(t for t in GGUFReader(dst).tensors if t.name == "output_norm.weight")
    with open(dst, "r+b") as f:
        f.seek(t.data_offset)
        f.write(np.full(t.n_elements, np.nan, dtype=np.float32).tobytes())
    return dst


def test_verification_catches_a_broken_output(tiny_trunk_gguf: Path, tmp_path: Path) -> None:
    """A file that parses but computes NaN is reported broken, not passed on as done, and not
    blamed on llama.cpp's repacked kernels (its rows are NaN one at a time too)."""
    import warnings

    from qwythos.quantize.pipeline import decode_probe

    assert decode_probe(tiny_trunk_gguf, 3) == 3
    bad = _with_nan_output_norm(tiny_trunk_gguf, tmp_path / "nan.gguf")
    with warnings.catch_warnings(record=True) as seen, pytest.raises(QwythosError, match="NaN"):
        warnings.simplefilter("always")
        decode_probe(bad, 3)
    assert not [w for w in seen if "repacked" in str(w.message)]


def test_output_failing_verification_never_gets_its_name(
    tiny_gguf: Path, tmp_path: Path, monkeypatch
) -> None:
    """Verified under the temporary name: a broken output is removed, and the message blames the
    quantizer when the source decodes fine, the source when it fails the same probe."""
    import qwythos.quantize.pipeline as pl

    real = pl.decode_probe

    def broken_output(path: Path, n: int = 4) -> int:
        if str(path).endswith(".partial"):
            raise QwythosError(f"{path} produces NaN or infinite logits", "the output is broken")
        return real(path, n)

    monkeypatch.setattr(pl, "decode_probe", broken_output)
    with pytest.raises(QwythosError) as e:
        quantize(tiny_gguf, tmp_path, types="Q8_0")
    assert "failed verification" in e.value.message and "the source decodes fine" in (e.value.hint or "")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob("*.partial"))
    assert not (tmp_path / SUMS).exists()

    def broken_everything(path: Path, n: int = 4) -> int:
        raise QwythosError(f"{path} produces NaN or infinite logits", "the output is broken")

    monkeypatch.setattr(pl, "decode_probe", broken_everything)
    with pytest.raises(QwythosError) as e:
        quantize(tiny_gguf, tmp_path, types="Q8_0")
    assert "the source" in e.value.message and "convert it again" in (e.value.hint or "")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob("*.partial"))


def test_nan_in_the_source_is_blamed_on_the_source(tiny_trunk_gguf: Path, tmp_path: Path) -> None:
    bad = _with_nan_output_norm(tiny_trunk_gguf, tmp_path / "nan-BF16.gguf")
    with pytest.raises(QwythosError) as e:
        quantize(bad, tmp_path / "out", types="Q8_0")
    assert "output_norm.weight" in e.value.message and "NaN" in (e.value.hint or "")
    assert not list((tmp_path / "out").glob("*.gguf*"))


def test_quantize_into_a_file_name_is_refused(tiny_gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(QwythosError) as e:
        quantize(tiny_gguf, tmp_path / "X.gguf", types="Q8_0")
    assert "folder" in e.value.message and not (tmp_path / "X.gguf").exists()
