"""README's promise under faults: every command run under every fault class ends in one message (no
traceback), leaves no file under a final name unless it is complete and verified, leaves its inputs
byte-identical, and a rerun succeeds.

Fault classes: a second writer; SIGINT / SIGTERM / SIGKILL mid-write, in Python (convert) and inside
llama.cpp (the quantizer, decoding); ENOSPC / EDQUOT / EFBIG / EIO injected into write(2) by strace,
and a real file-size limit; a read-only target; an input given as the output; non-UTF-8 text.
Commands run in a child process (testing/faults.py), except flag checks, which use typer's runner.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qwythos.cli import app
from qwythos.core.fileio import output_lock
from qwythos.core.llamacpp import interrupt
from qwythos.testing import faults as F

pytestmark = pytest.mark.skipif(F.STRACE is None, reason="strace is not installed")

SLOW = "delay_enter=40000"  # 40 ms per write(2): a command stays mid-write long enough to signal it
LATIN1 = "caf\xe9 na\xefve r\xe9sum\xe9 " * 40


@pytest.fixture(scope="module")
def ckpt(tiny_mtp_dir: Path, tmp_path_factory) -> Path:
    """A private copy of the tiny checkpoint (inputs are hashed before and after)."""
    d = tmp_path_factory.mktemp("ckpt") / "tiny"
    shutil.copytree(tiny_mtp_dir, d)
    return d


@pytest.fixture(scope="module")
def bf16(tiny_mtp_gguf: Path, tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("src") / "tiny-BF16.gguf"
    shutil.copyfile(tiny_mtp_gguf, p)
    return p


@pytest.fixture(scope="module")
def reference(ckpt: Path, tmp_path_factory) -> bytes:
    """A clean conversion's bytes: what every successful rerun must produce."""
    out = tmp_path_factory.mktemp("ref") / "o.gguf"
    r = F.cli("convert", ckpt, "-o", out, "--json")
    assert r.rc == 0, r.err
    return out.read_bytes()


def _rerun_convert(ckpt: Path, out: Path, reference: bytes) -> None:
    r = F.cli("convert", ckpt, "-o", out, "--force", "--json")
    assert r.rc == 0, r.err
    assert out.read_bytes() == reference
    assert F.leftovers(out.parent) == []


# ---------------------------------------------------------------- two writers


def test_second_writer_fails_with_a_message(ckpt: Path, tmp_path: Path, reference: bytes) -> None:
    before = F.digests(ckpt)
    out = tmp_path / "o.gguf"
    with output_lock(out):  # this test is the first writer
        r = F.cli("convert", ckpt, "-o", out)
    assert r.rc == 1 and "another process is writing" in F.one_message(r)
    assert not out.exists() and F.digests(ckpt) == before
    _rerun_convert(ckpt, out, reference)


def test_two_converts_at_once_leave_one_clean_file(ckpt: Path, tmp_path: Path, reference: bytes) -> None:
    out = tmp_path / "o.gguf"
    a = F.start("convert", ckpt, "-o", out, "--force", inject=SLOW)
    b = F.start("convert", ckpt, "-o", out, "--force", inject=SLOW)
    res = [(p.wait(120), p.stderr.read().decode()) for p in (a, b)]
    assert any(rc == 0 for rc, _ in res), res
    for rc, err in res:
        assert "Traceback" not in err
        assert rc == 0 or (rc == 1 and "another process is writing" in err), err
    assert out.read_bytes() == reference and F.leftovers(tmp_path) == []


def test_quantize_output_locked_by_another_writer(bf16: Path, tmp_path: Path) -> None:
    with output_lock(tmp_path / "tiny-Q8_0.gguf"):
        r = F.cli("quantize", bf16, "-o", tmp_path, "--types", "Q8_0")
    assert r.rc == 1 and "another process is writing" in F.one_message(r)
    assert not (tmp_path / "tiny-Q8_0.gguf").exists()
    r = F.cli("quantize", bf16, "-o", tmp_path, "--types", "Q8_0", "--json")
    assert r.rc == 0, r.err
    assert (tmp_path / "tiny-Q8_0.gguf").is_file() and F.leftovers(tmp_path) == []


# ---------------------------------------------------------------- signals


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_convert_stops_cleanly(sig, ckpt: Path, tmp_path: Path, reference: bytes) -> None:
    before = F.digests(ckpt)
    out = tmp_path / "o.gguf"
    r, dt, _ = F.signal_mid_write(F.start("convert", ckpt, "-o", out, inject=SLOW), tmp_path, sig)
    assert r.rc == 130 and "interrupted" in r.err and "Traceback" not in r.err, r.err
    assert dt < 10  # seconds, on a loaded 2-core machine
    assert not out.exists() and F.leftovers(tmp_path) == [] and F.digests(ckpt) == before
    if sig == signal.SIGTERM:
        _rerun_convert(ckpt, out, reference)


def test_sigkill_mid_convert_then_rerun_cleans_up(ckpt: Path, tmp_path: Path, reference: bytes) -> None:
    out = tmp_path / "o.gguf"
    r, _, _ = F.signal_mid_write(F.start("convert", ckpt, "-o", out, inject=SLOW), tmp_path, signal.SIGKILL)
    assert not out.exists()  # killed: its .partial may stay, never the final name
    _rerun_convert(ckpt, out, reference)  # ... and the rerun removes the dead process's .partial


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"]
)
def test_signal_inside_llama_quantize(sig, bf16: Path, tmp_path: Path) -> None:
    """llama_model_quantize has no abort hook: it runs in a child that is killed with the command."""
    before = F.digests(bf16)
    proc = F.start("quantize", bf16, "-o", tmp_path, "--types", "Q8_0", inject=SLOW)
    r, dt, kids = F.signal_mid_write(proc, tmp_path, sig)
    assert kids, "the quantizer runs in a child process"
    F.wait_for(lambda: not any(F.alive(k) for k in kids), 10, "the quantizer child to end")
    assert not (tmp_path / "tiny-Q8_0.gguf").exists() and F.digests(bf16) == before
    if sig != signal.SIGKILL:
        assert r.rc == 130 and "interrupted" in r.err and "Traceback" not in r.err, r.err
        assert "Exception ignored" not in r.err and dt < 10
        assert F.leftovers(tmp_path) == []
        return
    # killed outright: the child died with it; the rerun clears its .partial and succeeds
    r = F.cli("quantize", bf16, "-o", tmp_path, "--types", "Q8_0", "--json")
    assert r.rc == 0, r.err
    assert F.leftovers(tmp_path) == [] and (tmp_path / "tiny-Q8_0.gguf").is_file()


def test_decode_stops_at_the_abort_flag(tiny_mtp_gguf: Path, monkeypatch) -> None:
    """The native abort callback: a raised flag stops llama_decode inside llama.cpp."""
    from qwythos.core.llamacpp.handles import load_model

    with load_model(tiny_mtp_gguf) as model:
        ctx = model.new_target(256, n_batch=64)
        toks = list(range(1, 65))
        monkeypatch.setattr(interrupt, "clear", lambda: None)  # keep the flag raised into the call
        interrupt.request()
        with pytest.raises(KeyboardInterrupt):
            ctx.decode(toks, 0)
        monkeypatch.undo()
        interrupt.clear()
        ctx.clear()
        ctx.decode(toks, 0)  # the flag is down again: the same decode completes
        assert ctx.n_past == 64


def test_sigint_during_validate_exits_130(rt_trained_gguf: Path, tmp_path: Path) -> None:
    text = tmp_path / "long.txt"
    text.write_text(Path(__file__).read_text() * 6)
    proc = F.start("mtp", "validate", rt_trained_gguf, "--text", text, "--depth", "3")
    # past imports and loading (by the CPU time used), llama.cpp is scoring thousands of positions
    F.wait_for(lambda: F.cpu_seconds(proc.pid) > 3 or proc.poll() is not None, 60, "scoring")
    assert proc.poll() is None, "validate ended before the signal"
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert time.perf_counter() - t0 < 10
    err = err.decode()
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err


def test_sigint_during_run_prints_partial_reply_and_stats(rt_trained_gguf: Path) -> None:
    # greedy decoding of the tiny model loops without an end token (measured: 20000 of 20000 tokens),
    # so the reply is still being generated when the signal comes, on a fast machine too (sampled
    # at temperature 1 it ended after 1329 tokens, before 3 CPU-seconds on a fast machine); 4000
    # tokens in its trained context of 4096 take ~10 CPU-seconds (measured on this 2-core machine)
    proc = F.start(
        "run", rt_trained_gguf, "--raw", "-p", "Once upon a time", "--no-mtp", "--temp", "0",
        "--max-tokens", "4000", "--ctx", "4096",
    )  # fmt: skip
    pid = proc.pid
    # signal once it is generating: well past imports and loading, by the CPU time it has used
    F.wait_for(lambda: F.cpu_seconds(pid) > 3 or proc.poll() is not None, 60, "generation")
    assert proc.poll() is None, "run ended before the signal"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    err = err.decode()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "interrupted" in err and "generated" in err  # the stats line
    assert out.strip()  # the partial reply


# ---------------------------------------------------------------- write errors


@pytest.mark.parametrize(
    "errno_name,phrase",
    [
        ("ENOSPC", "disk full"),
        ("EDQUOT", "quota exceeded"),
        ("EFBIG", "larger than this file system"),
        ("EIO", "input/output error"),
    ],
)
def test_write_error_in_convert(errno_name: str, phrase: str, ckpt: Path, tmp_path: Path) -> None:
    before = F.digests(ckpt)
    out = tmp_path / "o.gguf"
    r = F.cli("convert", ckpt, "-o", out, inject=f"error={errno_name}:when=3")
    assert r.rc == 1 and phrase in F.one_message(r), r.err
    assert str(out) in r.err
    assert not out.exists() and F.leftovers(tmp_path) == [] and F.digests(ckpt) == before


def test_file_size_limit_is_efbig(ckpt: Path, tmp_path: Path, reference: bytes) -> None:
    out = tmp_path / "o.gguf"
    r = F.cli("convert", ckpt, "-o", out, fsize_limit=200_000)
    assert r.rc == 1 and "larger than this file system" in F.one_message(r)
    assert not out.exists() and F.leftovers(tmp_path) == []
    _rerun_convert(ckpt, out, reference)


def test_disk_full_inside_llama_quantize_blames_the_disk(bf16: Path, tmp_path: Path) -> None:
    r = F.cli("quantize", bf16, "-o", tmp_path, "--types", "Q8_0", inject="error=ENOSPC:when=20")
    err = F.one_message(r)
    assert r.rc == 1 and "could not write" in err and "the source is fine" in err, err
    assert not (tmp_path / "tiny-Q8_0.gguf").exists() and F.leftovers(tmp_path) == []


def test_read_only_target(ckpt: Path) -> None:
    r = F.cli("convert", ckpt, "-o", "/sys/qwythos-test.gguf")
    assert r.rc == 1 and "/sys" in F.one_message(r)


# ---------------------------------------------------------------- inputs are never outputs


def test_convert_onto_its_own_shard_is_refused(ckpt: Path) -> None:
    shard = sorted(ckpt.glob("*.safetensors"))[0]
    before = F.digests(ckpt)
    assert "inputs" in _invoke("convert", ckpt, "-o", shard, "--force")
    assert F.digests(ckpt) == before


def test_export_onto_its_gguf_through_a_link_is_refused(bf16: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.gguf"
    link.symlink_to(bf16)
    hard = tmp_path / "hard.gguf"
    before = F.digests(bf16)
    for target in (bf16, link):
        assert "inputs" in _invoke("export", "ollama", bf16, "-o", target, "--force")
    hard.hardlink_to(bf16)
    assert "the same file as" in _invoke("export", "ollama", bf16, "-o", hard, "--force")
    assert F.digests(bf16) == before


def test_restore_onto_its_head_source_is_refused(trained_ggufs: dict, tmp_path: Path) -> None:
    head = tmp_path / "head.gguf"
    shutil.copyfile(trained_ggufs["separate"], head)
    before = F.digests(head)
    assert "inputs" in _invoke(
        "mtp", "restore", trained_ggufs["trunk"], "--from", head, "-o", head, "--force"
    )
    assert F.digests(head) == before


# ---------------------------------------------------------------- non-UTF-8 text


def test_non_utf8_text_files(rt_trained_gguf: Path, tmp_path: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(LATIN1.encode("latin-1"))
    for args in (
        ["mtp", "validate", rt_trained_gguf, "--text", bad],
        ["eval", rt_trained_gguf, rt_trained_gguf, "--text", bad],
    ):
        out = _invoke(*args)
        assert "not UTF-8" in out and "latin1.txt" in out.replace(" ", "")


def test_non_utf8_arguments_and_chat_input(rt_trained_gguf: Path) -> None:
    r = F.cli("run", rt_trained_gguf, "-p", b"caf\xe9")  # real argv bytes
    assert r.rc == 1 and "not UTF-8" in F.one_message(r) and "-p" in r.err
    out = _invoke("run", rt_trained_gguf, "-p", "hi", "--system", "caf\udce9")  # how Python keeps them
    assert "--system holds bytes that are not UTF-8" in out
    r = F.cli("chat", rt_trained_gguf, "--max-tokens", "4", stdin=b"caf\xe9\n/exit\n")
    assert r.rc == 0 and "not UTF-8" in r.err and "Traceback" not in r.err, r.err


# ---------------------------------------------------------------- refused before any work


def _invoke(*args) -> str:
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert r.output.count("error:") == 1, r.output
    return " ".join(r.output.split())  # rich wraps at the runner's 80 columns


@pytest.mark.parametrize(
    "args,phrase",
    [
        (["mtp", "validate", "{m}", "--min-accept", "2"], "--min-accept"),
        (["mtp", "validate", "{m}", "--depth", "9"], "--depth"),
        (["run", "{m}", "-p", "hi", "--temp", "-1"], "--temp"),
        (["run", "{m}", "-p", "hi", "--top-p", "1.5"], "--top-p"),
        (["run", "{m}", "-p", "hi", "--top-k", "-3"], "--top-k"),
        (["run", "{m}", "-p", "hi", "--min-p", "2"], "--min-p"),
        (["run", "{m}", "-p", "hi", "--repeat-penalty", "0"], "--repeat-penalty"),
        (["run", "{m}", "-p", ""], "empty"),
        (["run", "{m}", "-p", "hi", "--ctx", "-5"], "--ctx"),
        (["bench", "{m}", "--max-tokens", "0"], "--max-tokens"),
        (["plan", "{m}", "--ctx", "-1"], "--ctx"),
        (["demo", "-o", "{tmp}/demo", "--max-tokens", "0"], "--max-tokens"),
        (["quantize", "{m}", "-o", "{tmp}/X.gguf"], "folder"),
        (["convert", "{ckpt}", "-o", "{tmp}", "--force"], "is a folder"),
        (["eval", "{m}", "{m2}", "--text", "{text}", "--plot", "{tmp}"], "is a folder"),
        (["eval", "{m}", "{m}", "--text", "{text}", "--plot", "{m}"], "inputs"),
        (["eval", "{m}", "{other}", "--text", "{text}"], "not a quantization"),
    ],
)
def test_flags_and_paths_checked_first(
    args, phrase, rt_trained_gguf: Path, tiny_mtp_gguf: Path, ckpt: Path, tmp_path: Path
) -> None:
    m2 = tmp_path / "copy.gguf"
    shutil.copyfile(rt_trained_gguf, m2)
    text = tmp_path / "t.txt"
    text.write_text("some text " * 50)
    fill = {
        "m": rt_trained_gguf,
        "m2": m2,
        "other": tiny_mtp_gguf,
        "ckpt": ckpt,
        "tmp": tmp_path,
        "text": text,
    }
    out = _invoke(*[a.format(**{k: str(v) for k, v in fill.items()}) for a in args])
    assert phrase in out and out.count("error:") == 1, out
    assert not (tmp_path / "X.gguf").exists()


def test_imatrix_of_another_model_is_refused(bf16: Path, trained_ggufs: dict, tmp_path: Path) -> None:
    from qwythos.testing.imatrix import write_imatrix

    im = write_imatrix(tmp_path / "other.imatrix.gguf", trained_ggufs["trunk"])
    out = _invoke("quantize", bf16, "-o", tmp_path / "q", "--types", "IQ2_XS", "--imatrix", im)
    assert "made for another model" in out and "other.imatrix.gguf" in out.replace(" ", "")
    assert not list((tmp_path / "q").glob("*.gguf"))


def test_manifest_and_sums_keep_two_models(bf16: Path, rt_trained_gguf: Path, tmp_path: Path) -> None:
    """Keyed by file name: a second model quantized into the folder keeps the first one's entries."""
    from qwythos.quantize.pipeline import quantize

    other = tmp_path / "other-BF16.gguf"
    shutil.copyfile(rt_trained_gguf, other)
    for src in (bf16, other):
        quantize(src, tmp_path / "q", types="Q8_0", verify=False)
    man = json.loads((tmp_path / "q" / "quantize-manifest.json").read_text())
    assert set(man["outputs"]) == {"tiny-Q8_0.gguf", "other-Q8_0.gguf"}
    sums = (tmp_path / "q" / "SHA256SUMS").read_text().split()
    assert "tiny-Q8_0.gguf" in sums and "other-Q8_0.gguf" in sums
    assert F.leftovers(tmp_path / "q") == []
    # upload re-hashes every GGUF against SHA256SUMS before it publishes the folder
    from qwythos.core.errors import QwythosError
    from qwythos.export.upload import plan_upload

    plan_upload(tmp_path / "q", "me/x", dry_run=True)  # intact: accepted
    q8 = tmp_path / "q" / "tiny-Q8_0.gguf"
    data = bytearray(q8.read_bytes())
    data[-1] ^= 0xFF
    q8.write_bytes(bytes(data))
    with pytest.raises(QwythosError, match="does not match its line"):
        plan_upload(tmp_path / "q", "me/x", dry_run=True)
