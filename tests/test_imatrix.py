"""qwythos imatrix: the collector on hand-built ggml nodes and against a numpy forward of the trained
tiny model, the MTP head's pairing, the file (read back by our reader and the quantizer's), resuming
after Ctrl-C, and every refusal as one message."""

from __future__ import annotations

import ctypes
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from qwythos.cli import app
from qwythos.core.errors import QwythosError
from qwythos.core.gguf.file import read_header, read_tensor_bytes
from qwythos.core.model.release import CALIBRATION_TEXT
from qwythos.quantize.imatrix import compute_imatrix
from qwythos.quantize.imatrix_checkpoint import checkpoint_path
from qwythos.quantize.imatrix_collect import Collector
from qwythos.quantize.imatrix_file import ImatrixData, read_imatrix, write_imatrix
from qwythos.quantize.imatrix_ggml import OP_MUL_MAT, OP_MUL_MAT_ID, GGMLTensor
from qwythos.quantize.llama_quant import load_imatrix
from qwythos.testing import faults as F

F32, F16, I32 = 0, 1, 26


# ---------------------------------------------------------------- hand-built ggml nodes


class Graph:
    """ggml_tensor structs in our memory, pointing at numpy arrays (all kept alive here)."""

    def __init__(self) -> None:
        self.keep: list = []

    def tensor(self, name: str = "", arr: np.ndarray | None = None, ne=None, *, gtype: int = F32) -> int:
        t = GGMLTensor()
        t.name = name.encode()
        t.type = gtype
        if arr is not None:  # ggml order: ne[0] is the last numpy axis; strides in bytes
            dims = arr.ndim
            ne = [arr.shape[dims - 1 - i] if i < dims else 1 for i in range(4)]
            nb = [arr.strides[dims - 1 - i] if i < dims else arr.strides[0] * arr.shape[0] for i in range(4)]
            t.data = arr.ctypes.data
            for i in range(4):
                t.nb[i] = nb[i]
            self.keep.append(arr)
        for i, n in enumerate(ne or [1, 1, 1, 1]):
            t.ne[i] = n
        self.keep.append(t)
        return ctypes.addressof(t)

    def node(self, op: int, *srcs: int) -> int:
        t = GGMLTensor()
        t.op = op
        for i, s in enumerate(srcs):
            t.src[i] = s
        self.keep.append(t)
        return ctypes.addressof(t)


def _run(c: Collector, node: int) -> bool:
    """The scheduler's two calls: ask, then (if wanted) collect."""
    if not c.callback(node, True, None):
        return False
    assert c.callback(node, False, None)
    return True


def test_collector_sums_squares_of_strided_rows() -> None:
    g, c = Graph(), Collector()
    rng = np.random.default_rng(0)
    base = rng.standard_normal((20, 12)).astype(np.float32)
    x = base[:, :8]  # rows of 8 with a 48-byte stride: not contiguous
    w = g.tensor("blk.0.ffn_up.weight", ne=[8, 5, 1, 1], gtype=F16)
    assert _run(c, g.node(OP_MUL_MAT, w, g.tensor("act", x)))
    assert _run(c, g.node(OP_MUL_MAT, w, g.tensor("act", x)))
    c.commit()
    e = c.totals["blk.0.ffn_up.weight"]
    np.testing.assert_allclose(e.sums[0], 2 * (x.astype(np.float64) ** 2).sum(0), rtol=1e-6)
    assert e.counts.tolist() == [40]


def test_collector_asks_only_for_what_llama_imatrix_collects() -> None:
    g, c = Graph(), Collector()
    x = np.ones((16, 8), dtype=np.float32)
    cases = {
        "blk.1.attn_q.weight": (x, F32, True),
        "CUDA0#blk.1.attn_k.weight#0": (x, F32, True),  # a backend's copy: stored under the weight's name
        "output.weight": (x, F32, False),  # llama-imatrix's default leaves the output matrix out
        "token_embd.weight": (x, F32, False),
        "blk.1.attn_v.weight": (x[:15], F32, False),  # fewer than 16 rows
        "blk.1.ffn_up.weight": (x.astype(np.float16), F16, False),  # activations not float32
    }
    for name, (act, t, want) in cases.items():
        node = g.node(OP_MUL_MAT, g.tensor(name, ne=[8, 4, 1, 1]), g.tensor("a", act, gtype=t))
        assert _run(c, node) is want, name
    assert not c.callback(g.node(7, g.tensor("blk.1.x.weight"), g.tensor("a", x)), True, None)  # not a matmul
    c.commit()
    assert sorted(c.totals) == ["blk.1.attn_k.weight", "blk.1.attn_q.weight"]


def test_collector_flattens_3d_activations_onto_stacked_weights() -> None:
    g, c = Graph(), Collector()
    x = np.random.default_rng(1).standard_normal((4, 16, 8)).astype(np.float32)  # ne [8, 16, 4]
    w = g.tensor("blk.0.w.weight", ne=[8, 3, 2, 1])  # two stacked matrices
    assert _run(c, g.node(OP_MUL_MAT, w, g.tensor("a", x)))
    c.commit()
    e = c.totals["blk.0.w.weight"]
    sq = x.astype(np.float64) ** 2
    np.testing.assert_allclose(e.sums[0], sq[0::2].sum((0, 1)), rtol=1e-6)
    np.testing.assert_allclose(e.sums[1], sq[1::2].sum((0, 1)), rtol=1e-6)
    assert e.counts.tolist() == [4 * 16 // 2]


def test_collector_routes_rows_to_their_experts() -> None:
    g, c = Graph(), Collector()
    rng = np.random.default_rng(2)
    n_tok, n_used, n_exp, n_in = 17, 2, 3, 8
    x = rng.standard_normal((n_tok, n_used, n_in)).astype(np.float32)  # ne [8, 2, 17]
    ids = rng.integers(0, n_exp, (n_tok, n_used)).astype(np.int32)  # ne [2, 17]
    w = g.tensor("blk.0.ffn_up_exps.weight", ne=[n_in, 5, n_exp, 1])
    assert _run(c, g.node(OP_MUL_MAT_ID, w, g.tensor("a", x), g.tensor("ids", ids, gtype=I32)))
    c.commit()
    e = c.totals["blk.0.ffn_up_exps.weight"]
    want = np.zeros((n_exp, n_in))
    for t in range(n_tok):
        for k in range(n_used):
            want[ids[t, k]] += x[t, k].astype(np.float64) ** 2
    np.testing.assert_allclose(e.sums, want, rtol=1e-6)
    assert e.counts.tolist() == np.bincount(ids.ravel(), minlength=n_exp).tolist()


def test_collector_error_is_raised_after_the_graph_and_the_chunk_dropped() -> None:
    g, c = Graph(), Collector()
    x = np.ones((16, 8), dtype=np.float32)
    x[3, 2] = np.inf
    w = g.tensor("blk.0.ffn_up.weight", ne=[8, 4, 1, 1])
    assert c.callback(g.node(OP_MUL_MAT, w, g.tensor("a", x)), True, None)
    assert not c.callback(g.node(OP_MUL_MAT, w, g.tensor("a", x)), False, None)  # never raises into C
    with pytest.raises(QwythosError, match="non-finite activations entering blk.0.ffn_up.weight"):
        c.commit()
    assert c.totals == {} and c.pending == {}


# ---------------------------------------------------------------- against a numpy forward


def _f32(hdr, name: str) -> np.ndarray:
    t = next(t for t in hdr.tensors if t.name == name)
    raw = read_tensor_bytes(hdr, name)
    if t.ggml_type == 30:  # BF16
        u = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
        return u.view(np.float32).reshape(t.shape)
    return np.frombuffer(raw, dtype=np.float32).reshape(t.shape)


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


@pytest.fixture(scope="module")
def full_run(trained_ggufs, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("im") / "full.imatrix.gguf"
    rep = compute_imatrix(trained_ggufs["full"], out, [CALIBRATION_TEXT], ctx=64, chunks=5, threads=1)
    return out, rep


def _chunks(gguf: Path, ctx: int, n: int) -> np.ndarray:
    from qwythos.core.llamacpp.handles import load_model

    with load_model(gguf, mtp=False) as m:
        toks = m.tokenize(CALIBRATION_TEXT.read_text(), add_special=True, parse_special=False)
    return np.array(toks[: n * ctx]).reshape(n, ctx)


def test_first_layer_inputs_equal_a_numpy_forward(trained_ggufs, full_run) -> None:
    out, rep = full_run
    gguf = trained_ggufs["full"]
    hdr = read_header(gguf)
    eps = hdr.kv["qwen35.attention.layer_norm_rms_epsilon"]
    x = _rms(
        _f32(hdr, "token_embd.weight")[_chunks(gguf, 64, 5).ravel()], _f32(hdr, "blk.0.attn_norm.weight"), eps
    )
    want = (x * x).sum(0)
    d = read_imatrix(out)
    for name in ("attn_qkv", "attn_gate", "ssm_alpha", "ssm_beta"):  # the linear-attention block's inputs
        got = d.sums[f"blk.0.{name}.weight"][0]
        np.testing.assert_allclose(got, want, rtol=2e-4, err_msg=name)
        assert d.counts[f"blk.0.{name}.weight"].tolist() == [5 * 64]
    assert (d.chunk_count, d.chunk_size, d.datasets) == (5, 64, [CALIBRATION_TEXT.name])
    assert rep.chunks == 5 and rep.head and rep.entries == len(d.sums)


def test_head_reads_each_token_with_the_previous_hidden_state(trained_ggufs, full_run) -> None:
    """eh_proj's input is [enorm(embed(x_p)), hnorm(h_{p-1})], h_{-1} = 0: both halves from numpy
    (the trunk's hidden states from a target context); pairing h_p instead does not match."""
    from qwythos.core.llamacpp.handles import load_model

    out, _ = full_run
    gguf = trained_ggufs["full"]
    hdr = read_header(gguf)
    view_layers = hdr.kv["qwen35.block_count"] - hdr.kv["qwen35.nextn_predict_layers"]
    blk = f"blk.{view_layers}"
    eps = hdr.kv["qwen35.attention.layer_norm_rms_epsilon"]
    chunks = _chunks(gguf, 64, 5)
    with load_model(gguf, mtp=False) as m:
        ctx = m.new_target(64, n_draft=1, n_batch=64)
        hidden = []
        for ch in chunks:
            ctx.clear()
            ctx.decode(ch, 0)
            hidden.append(ctx.hidden(64).copy())
    hidden = np.array(hidden)  # (chunks, 64, n_embd)
    e = _rms(_f32(hdr, "token_embd.weight")[chunks.ravel()], _f32(hdr, f"{blk}.nextn.enorm.weight"), eps)
    prev = np.concatenate([np.zeros_like(hidden[:, :1]), hidden[:, :-1]], axis=1).reshape(
        -1, hidden.shape[-1]
    )
    hn = _rms(prev, _f32(hdr, f"{blk}.nextn.hnorm.weight"), eps)
    got = read_imatrix(out).sums[f"{blk}.nextn.eh_proj.weight"][0]
    n = e.shape[1]
    np.testing.assert_allclose(got[:n], (e * e).sum(0), rtol=2e-4)
    np.testing.assert_allclose(got[n:], (hn * hn).sum(0), rtol=2e-3)
    same = _rms(hidden.reshape(-1, n), _f32(hdr, f"{blk}.nextn.hnorm.weight"), eps)
    assert np.abs((same * same).sum(0) / got[n:] - 1).max() > 0.01  # the test can tell the pairings apart


def test_head_entries_and_the_trunk_unchanged_by_them(trained_ggufs, full_run, tmp_path) -> None:
    out, rep = full_run
    full = read_imatrix(out)
    trunk_only = compute_imatrix(
        trained_ggufs["full"],
        tmp_path / "t.gguf",
        [CALIBRATION_TEXT],
        ctx=64,
        chunks=5,
        threads=1,
        head=False,
    )
    trunk = read_imatrix(trunk_only.output)
    n_layer = 4
    head = sorted(n for n in full.sums if n.startswith(f"blk.{n_layer}."))
    assert head == [
        f"blk.{n_layer}.{n}.weight"
        for n in (
            "attn_k",
            "attn_output",
            "attn_q",
            "attn_v",
            "ffn_down",
            "ffn_gate",
            "ffn_up",
            "nextn.eh_proj",
        )
    ]
    assert rep.head_entries == len(head) and not trunk_only.head and trunk_only.head_entries == 0
    assert sorted(trunk.sums) == sorted(set(full.sums) - set(head))
    for n in trunk.sums:  # the trunk's data does not depend on running the head after it
        np.testing.assert_array_equal(trunk.sums[n], full.sums[n])
    for n in head:
        assert full.counts[n].tolist() == [5 * 64]


# ---------------------------------------------------------------- the file


def test_file_reads_back_in_both_readers(full_run) -> None:
    out, _ = full_run
    ours = read_imatrix(out)
    quant = load_imatrix(out)  # what `qwythos quantize --imatrix` uses
    assert sorted(quant.entries) == sorted(ours.sums)
    for n, v in quant.entries.items():
        np.testing.assert_allclose(v, ours.mean(n), rtol=1e-6)
    assert quant.chunk_count == 5 and quant.datasets == [CALIBRATION_TEXT.name]
    hdr = read_header(out)
    assert hdr.kv["general.type"] == "imatrix"
    names = [t.name for t in hdr.tensors]
    assert names == [f"{n}{s}" for n in sorted(ours.sums) for s in (".in_sum2", ".counts")]
    # as llama-imatrix writes one matrix: [n_in] and [1] (ggml drops trailing dimensions of 1)
    assert hdr.tensors[0].ne == (ours.sums[names[0][: -len(".in_sum2")]].shape[1],) and hdr.tensors[1].ne == (
        1,
    )


def test_writer_refuses_nothing_to_write(tmp_path: Path) -> None:
    with pytest.raises(QwythosError, match="no importance data"):
        write_imatrix(tmp_path / "x.gguf", ImatrixData(datasets=["t"]))
    assert list(tmp_path.iterdir()) == []


def test_head_data_lets_iq_types_quantize_the_head(tiny_mtp_gguf: Path, tmp_path: Path) -> None:
    """With data for the MTP block an IQ type keeps the head (no q8_0 fallback note)."""
    from qwythos.quantize.pipeline import quantize

    im = compute_imatrix(tiny_mtp_gguf, tmp_path / "im.gguf", [CALIBRATION_TEXT], ctx=64, chunks=3, threads=1)
    assert im.head_entries > 0
    rep = quantize(tiny_mtp_gguf, tmp_path / "q", types="IQ2_XS", imatrix=im.output, mtp_type="same")
    assert not any("no data for the MTP head" in n for n in rep.notes), rep.notes
    assert rep.outputs[0].mtp_type.lower().startswith("iq")


# ---------------------------------------------------------------- resuming


def test_interrupted_run_resumes_to_the_same_file(trained_ggufs, tmp_path: Path) -> None:
    kw = dict(ctx=64, chunks=6, threads=1)
    whole = compute_imatrix(trained_ggufs["trunk"], tmp_path / "whole.gguf", [CALIBRATION_TEXT], **kw)
    out = tmp_path / "part.gguf"

    def stop_after_two(done: int, total: int) -> None:
        if done == 2 * 64:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compute_imatrix(
            trained_ggufs["trunk"],
            out,
            [CALIBRATION_TEXT],
            progress=stop_after_two,
            checkpoint_every_s=1e9,
            **kw,
        )
    ck = checkpoint_path(out)
    assert not out.exists() and ck.is_file()
    with pytest.raises(QwythosError):  # the checkpoint is no imatrix: never mistaken for a finished one
        load_imatrix(ck)
    rep = compute_imatrix(trained_ggufs["trunk"], out, [CALIBRATION_TEXT], **kw)
    assert rep.resumed_from == 2 and any("resumed after chunk 2" in n for n in rep.notes)
    assert not ck.exists()
    a, b = read_imatrix(whole.output), read_imatrix(out)
    assert sorted(a.sums) == sorted(b.sums)
    for n in a.sums:
        np.testing.assert_array_equal(a.sums[n], b.sums[n])
        np.testing.assert_array_equal(a.counts[n], b.counts[n])


def test_checkpoint_of_another_run_is_not_resumed(trained_ggufs, tmp_path: Path) -> None:
    out = tmp_path / "x.gguf"

    def stop(done: int, total: int) -> None:
        if done == 64:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compute_imatrix(trained_ggufs["trunk"], out, [CALIBRATION_TEXT], ctx=64, chunks=3, progress=stop)
    rep = compute_imatrix(trained_ggufs["trunk"], out, [CALIBRATION_TEXT], ctx=96, chunks=3)
    assert rep.resumed_from == 0 and any("started over" in n for n in rep.notes)
    assert read_imatrix(out).counts["blk.0.attn_qkv.weight"].tolist() == [3 * 96]


# ---------------------------------------------------------------- the command


def _one_message(args: list) -> str:
    r = CliRunner().invoke(app, [str(a) for a in args])
    err = r.output
    assert r.exit_code == 1 and "Traceback" not in err and err.count("error:") == 1, err
    return " ".join(err.split())


def test_every_bad_input_is_one_message(trained_ggufs, full_run, tmp_path: Path) -> None:
    gguf = trained_ggufs["trunk"]
    short = tmp_path / "short.txt"
    short.write_text("def f():\n    return 1\n")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 ".encode("latin-1") * 50)
    existing = tmp_path / "exists.gguf"
    existing.write_bytes(b"x")
    o = ["-o", tmp_path / "o.gguf"]
    assert "not qwen35" in _one_message(["imatrix", full_run[0], *o])  # an imatrix file is no model
    assert "not a GGUF file" in _one_message(["imatrix", CALIBRATION_TEXT, *o])
    assert "shorter than one chunk of 512" in _one_message(["imatrix", gguf, "--text", short, *o])
    assert "not UTF-8" in _one_message(["imatrix", gguf, "--text", latin, *o])
    assert "not found" in _one_message(["imatrix", gguf, "--text", tmp_path / "none.txt", *o])
    assert "--ctx 8 is too small" in _one_message(["imatrix", gguf, "--ctx", "8", *o])
    assert "--chunks 0" in _one_message(["imatrix", gguf, "--chunks", "0", *o])
    assert "--threads 0 is out of range" in _one_message(
        ["imatrix", gguf, "-t", "0", *o]
    )  # one rule for every command
    assert "already exists" in _one_message(["imatrix", gguf, "-o", existing])
    assert "checkpoint's name" in _one_message(["imatrix", gguf, "-o", tmp_path / "a.gguf.checkpoint"])
    assert "one of this command's inputs" in _one_message(["imatrix", gguf, "-o", gguf, "--force"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.gguf", "latin.txt", "short.txt"]


def test_command_writes_the_file_and_reports_json(trained_ggufs, tmp_path: Path) -> None:
    import json

    out = tmp_path / "cli.imatrix.gguf"
    r = CliRunner().invoke(
        app, ["imatrix", str(trained_ggufs["full"]), "-o", str(out), "--ctx", "64", "--chunks", "2", "--json"]
    )
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["output"] == str(out) and rep["chunks"] == 2 and rep["head_entries"] == 8
    assert rep["datasets"] == ["imatrix-calibration.txt"]  # the bundled calibration text by default
    assert read_imatrix(out).chunk_count == 2


@pytest.mark.slow
def test_sigint_stops_within_seconds_and_the_rerun_resumes(trained_ggufs, tmp_path: Path) -> None:
    import json

    text = tmp_path / "long.txt"
    text.write_text(CALIBRATION_TEXT.read_text() * 100)  # minutes of work
    out = tmp_path / "o.gguf"
    args = ("imatrix", trained_ggufs["full"], "--text", text, "-o", out, "--ctx", "64")
    proc = F.start(*args)
    F.wait_for(lambda: F.cpu_seconds(proc.pid) > 5 or proc.poll() is not None, 60, "collecting")
    assert proc.poll() is None, "imatrix ended before the signal"
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    err = err.decode()
    assert time.perf_counter() - t0 < 10
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert "Exception ignored" not in err, err
    ck = checkpoint_path(out)
    assert not out.exists() and ck.is_file()
    with np.load(ck, allow_pickle=False) as z:
        done = json.loads(str(z["meta"]))["chunks_done"]
    assert done >= 1
    r = F.cli(*args, "--chunks", str(done + 2), "--json", timeout=120)  # the rest bounded: 2 more chunks
    assert r.rc == 0, r.err
    rep = json.loads(r.out)
    assert rep["resumed_from"] == done and rep["chunks"] == done + 2
    assert out.is_file() and not ck.exists()
