"""Flags and environment variables are untrusted input too (issue 22, items 7-9): every kind of value
has one checker (core/limits), every command that takes the flag uses it, and each refusal is one
message (exit 1 or 2), no traceback, before any work. Also the draft-cost cache's sanity check:
a busy machine's impossible measurements are not stored, and not trusted when found.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from qwythos.cli import app
from qwythos.core.errors import QwythosError

runner = CliRunner()


@pytest.fixture(scope="module")
def stub(tmp_path_factory) -> Path:
    """A header-only qwen35 GGUF trained for 4096 tokens (flags are refused before any loading)."""
    from qwythos.testing.stubs import write_stub_gguf

    return write_stub_gguf(tmp_path_factory.mktemp("flags") / "m.gguf", context_length=4096)


def _refused(args: list[str], want: str, env: dict | None = None) -> str:
    r = runner.invoke(app, args, env=env)
    out = " ".join(r.output.split())
    assert r.exit_code in (1, 2), (r.exit_code, r.output, r.exception)
    assert want in out, out
    assert "Traceback" not in r.output and not isinstance(r.exception, (RecursionError, ValueError))
    return out


# ---------------------------------------------------------------- one checker per kind of value

#: (command line before the flag, where the flag goes) for every command that takes --threads
THREAD_COMMANDS = [
    ["run", "M", "-p", "hi"],
    ["chat", "M"],
    ["bench", "M"],
    ["serve", "M"],
    ["eval", "M", "M"],
    ["imatrix", "M"],
    ["quantize", "M"],
    ["rpc-server"],
    ["demo"],
    ["mtp", "fit", "M"],
]


@pytest.mark.parametrize("value", ["0", "-3", "100000"])
@pytest.mark.parametrize("cmd", THREAD_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_threads_bounded_alike_in_every_command(cmd, value, stub):
    args = [str(stub) if a == "M" else a for a in cmd]
    out = _refused([*args, "--threads", value], f"--threads {value} is out of range")
    assert "per CPU" in out


def test_export_threads_are_the_servers_not_this_machines(stub, tmp_path):
    """An export's --threads is written for another machine: only at least 1 is asked there."""
    out = tmp_path / "m.kcpps"
    r = runner.invoke(app, ["export", "koboldcpp", str(stub), "-o", str(out), "--threads", "100000"])
    assert "out of range" not in r.output
    _refused(["export", "koboldcpp", str(stub), "-o", str(out), "--threads", "0"], "--threads 0")


def test_bad_qwythos_threads_names_the_variable(stub):
    for cmd in (["run", str(stub), "-p", "hi"], ["bench", str(stub)]):
        _refused(cmd, "QWYTHOS_THREADS='abc' is not a number", env={"QWYTHOS_THREADS": "abc"})
    _refused(
        ["run", str(stub), "-p", "hi"], "QWYTHOS_THREADS 0 is out of range", env={"QWYTHOS_THREADS": "0"}
    )


def test_qwythos_threads_read_by_the_library(monkeypatch):
    from qwythos.core import limits
    from qwythos.core.llamacpp.handles import default_threads

    monkeypatch.setenv("QWYTHOS_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.setenv("QWYTHOS_THREADS", "")  # empty: unset
    assert default_threads() == limits.cpu_count()
    monkeypatch.setenv("QWYTHOS_THREADS", "x2")
    with pytest.raises(QwythosError, match="QWYTHOS_THREADS"):
        default_threads()


FLOAT_FLAGS = [
    (["run", "M", "-p", "hi"], "--temp"),
    (["run", "M", "-p", "hi"], "--top-p"),
    (["run", "M", "-p", "hi"], "--min-p"),
    (["run", "M", "-p", "hi"], "--repeat-penalty"),
    (["chat", "M"], "--temp"),
    (["mtp", "fit", "M"], "--lr"),
    (["mtp", "validate", "M"], "--min-accept"),
]


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
@pytest.mark.parametrize(("cmd", "flag"), FLOAT_FLAGS, ids=lambda x: x if isinstance(x, str) else x[0])
def test_float_flags_must_be_finite(cmd, flag, value, stub):
    args = [str(stub) if a == "M" else a for a in cmd]
    _refused([*args, flag, value], f"{flag} {value} is not a finite number")


@pytest.mark.parametrize("seed", ["-5", str(2**32), str(2**70)])
def test_seed_out_of_range_is_one_message(seed, stub):
    _refused(["run", str(stub), "-p", "hi", "--seed", seed], f"--seed {seed} is out of range")


def test_sampling_library_checks_alike():
    from qwythos.commands.engine_flags import sampling_from_flags

    with pytest.raises(QwythosError, match="not a finite number"):
        sampling_from_flags(float("inf"), None, None, None, None, None)
    with pytest.raises(QwythosError, match="--seed -1"):
        sampling_from_flags(None, None, None, None, None, -1)
    assert sampling_from_flags(0.5, None, None, None, None, 7).seed == 7


# ---------------------------------------------------------------- --ctx and memory


def test_ctx_above_the_trained_context_refused_before_loading(stub):
    out = _refused(["run", str(stub), "-p", "hi", "--ctx", "1000000000"], "above the 4096 tokens")
    assert "--ctx 4096 or less" in out
    _refused(["chat", str(stub), "--ctx", "5000"], "above the 4096 tokens")
    _refused(["serve", str(stub), "--ctx", "5000"], "above the 4096 tokens")


def test_ctx_checked_against_available_memory(tiny_mtp_gguf):
    from qwythos.core.model.memory import check_context

    mem = check_context(tiny_mtp_gguf, 64, available=None)
    assert mem.total > 0
    with pytest.raises(QwythosError, match="more than the .* GiB this machine has available"):
        check_context(tiny_mtp_gguf, 64, available=mem.total - 1)
    check_context(tiny_mtp_gguf, 64, available=mem.total)
    check_context(tiny_mtp_gguf, 64, available=1, offloaded=True)  # its memory is elsewhere


# ---------------------------------------------------------------- environment


def test_empty_xdg_cache_home_counts_as_unset(monkeypatch, tmp_path):
    from qwythos.core.fileio import cache_dir

    monkeypatch.delenv("QWYTHOS_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert cache_dir() == Path.home() / ".cache" / "qwythos"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("x") == tmp_path / "xdg" / "qwythos" / "x"


# ---------------------------------------------------------------- mtp fit, export, tools


@pytest.mark.parametrize(
    ("flag", "value", "want"),
    [
        ("--seq", "0", "--seq 0 is too small"),
        ("--seq", "-5", "--seq -5 is too small"),
        ("--batch", "0", "--batch 0 is too small"),
        ("--lr", "0", "--lr 0.0 is not a learning rate"),
    ],
)
def test_mtp_fit_numbers_refused_before_any_work(flag, value, want, stub, tmp_path):
    out = tmp_path / "fit.gguf"
    _refused(["mtp", "fit", str(stub), "-o", str(out), flag, value], want)
    assert not out.exists() and not Path(str(out) + ".work").exists()


@pytest.mark.parametrize(
    ("flag", "value", "want"),
    [
        ("--master-addr", "not an ip", "neither an IP address nor a host name"),
        ("--host", "a;rm -rf /", "neither an IP address nor a host name"),
        ("--port", "70000", "--port 70000 is not a TCP port"),
        ("--master-port", "0", "--master-port 0 is not a TCP port"),
    ],
)
@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_export_engine_addresses_refused_before_writing(engine, flag, value, want, tmp_path):
    folder, out = tmp_path / "hf", tmp_path / "serve"
    folder.mkdir()
    _refused(["export", engine, str(folder), "-o", str(out), flag, value], want)
    assert not out.exists() and sorted(folder.iterdir()) == []


def test_export_engine_takes_names_and_addresses():
    from qwythos.core.limits import check_host

    for ok in ("10.0.0.1", "::1", "node0.cluster", "head-node", "localhost"):
        assert check_host(ok, "--master-addr") == ok
    for bad in ("", "-x", "a..b", "x" * 64, "a b"):
        with pytest.raises(QwythosError):
            check_host(bad, "--master-addr")


@pytest.mark.parametrize(
    ("cmd", "value"), [(["serve", "M"], "70000"), (["serve", "M"], "-1"), (["rpc-server"], "0")]
)
def test_ports_out_of_range(cmd, value, stub):
    args = [str(stub) if a == "M" else a for a in cmd]
    _refused([*args, "--port", value], f"--port {value} is not a TCP port")


def test_tools_file_nested_deep_is_one_message(stub, tmp_path):
    deep = tmp_path / "tools.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    _refused(["run", str(stub), "-p", "hi", "--tools", str(deep)], "nested too deeply")


# ---------------------------------------------------------------- wording


def test_image_folder_is_called_a_folder(stub, tmp_path):
    _refused(["run", str(stub), "-p", "hi", "--image", str(tmp_path)], "is a folder, not a picture")


def test_rpc_server_bad_host_refused_before_any_warning():
    out = _refused(["rpc-server", "--host", "garbage"], "not an IPv4 address")
    assert "listening" not in out and "warning" not in out


def test_rpc_at_an_http_server_says_so():
    from qwythos.core.llamacpp import rpc

    class Quiet(BaseHTTPRequestHandler):
        def log_message(self, *a):  # noqa: ANN002
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        ep = rpc.Endpoint("127.0.0.1", httpd.server_address[1])
        with pytest.raises(
            QwythosError, match="is not a llama.cpp rpc-server: it answers like an HTTP server"
        ) as e:
            rpc.query_worker(ep, timeout=1.0)
        assert "another run" not in e.value.message + (e.value.hint or "")
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_rpc_silent_server_names_both_causes():
    from qwythos.core.llamacpp import rpc

    with socket.socket() as s:  # accepts (the kernel's backlog) and never answers
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        ep = rpc.Endpoint("127.0.0.1", s.getsockname()[1])
        with pytest.raises(QwythosError, match="did not answer HELLO") as e:
            rpc.query_worker(ep, timeout=0.5)
    assert "not an rpc-server" in e.value.hint and "another run" in e.value.hint


def test_eval_blames_a_damaged_base(stub, tiny_mtp_gguf):
    out = _refused(["eval", str(stub), str(tiny_mtp_gguf)], f"the base {stub} is damaged")
    assert "convert the BF16 base again" in out
    out = _refused(["eval", str(tiny_mtp_gguf), str(stub)], f"the quantization {stub} is damaged")


# ---------------------------------------------------------------- the draft-cost cache


def test_impossible_costs_are_not_stored_nor_trusted(tmp_path, draft_cost_cache):
    from qwythos.core.drafting import costs as dc

    f = tmp_path / "m.gguf"
    f.write_bytes(b"x")
    sound = dc.DraftCosts([0.10, 0.12, 0.14], 0.01, [0.7, 0.5])
    assert dc.implausible(sound) is None
    busy = dc.DraftCosts([0.10, 0.0003, 0.14], 0.0, [0.7, 0.5])  # a batch of 2 "333x" cheaper than 1
    assert "ceiling of 2x" in dc.implausible(busy)
    for bad in (
        busy,
        dc.DraftCosts([float("nan"), 0.1], 0.01, [0.5]),
        dc.DraftCosts([0.1, 0.1], -1.0, [0.5]),
        dc.DraftCosts([0.1, 0.12], 0.01, [1.5]),
        dc.DraftCosts([0.0, 0.1], 0.01, [0.5]),
    ):
        with pytest.raises(QwythosError, match="measure again"):
            dc.store(f, 2, bad, 1)
    assert not draft_cost_cache.exists()
    # an impossible entry already in the cache (an older qwythos, an edited file) is not trusted
    dc.store(f, 2, sound, 1)
    data = json.loads(draft_cost_cache.read_text())
    (entry,) = data.values()
    entry["costs"]["verify_s"] = busy.verify_s
    draft_cost_cache.write_text(json.dumps(data))
    assert dc.lookup(f, 2) is None and dc.recommended_draft(f, 2) is None
    # a run's entry is only where the next run starts measuring: its times are checked, not its ratios
    g = tmp_path / "g.gguf"
    g.write_bytes(b"y")
    assert dc.store(g, 2, busy, 0, source="run") is not None and dc.lookup(g, 2).source == "run"
    with pytest.raises(QwythosError, match="non-positive or non-finite"):
        dc.store(g, 2, dc.DraftCosts([0.1, float("inf")], 0.01, [0.5]), 0, source="run")


def test_speedup_ceiling_and_scatter():
    from qwythos.core.drafting import costs as dc

    assert dc.speedup_past_ceiling(1, 1.9) is None and dc.speedup_past_ceiling(4, 4.9) is None
    assert "ceiling is 2x" in dc.speedup_past_ceiling(1, 333.0)
    assert dc.speedup_past_ceiling(2, float("inf")) is not None
    assert dc.scatter([1.0, 1.0, 1.0]) == 0.0 and dc.scatter([1.0]) == 0.0
    assert dc.scatter([1.0, 1.1, 0.9, 1.0]) < 0.1 < dc.MAX_SCATTER < dc.scatter([0.1, 0.1, 0.1, 5.0])


def _row(mode, draft, speedup, scatter=0.0):
    from qwythos.runtime.speed import BenchRow

    return BenchRow(
        mode, draft, 64, 10.0, 10.0, 0.5, [0.5], 1.5, speedup, True, 0, 0, 0, 0, 1.0, scatter=scatter
    )


def test_bench_keeps_unsound_measurements_out_of_the_cache(stub, draft_cost_cache):
    from qwythos.core.drafting import costs as dc
    from qwythos.core.drafting.costs import DraftCosts
    from qwythos.runtime.speed import BenchReport, _store

    model = SimpleNamespace(path=stub, placement="")
    costs = DraftCosts([0.10, 0.12], 0.01, [0.6])
    cases = [
        ([_row("plain", 0, 1.0), _row("mtp draft 1", 1, 333.0)], "ceiling is 2x"),
        ([_row("plain", 0, 1.0, scatter=0.9), _row("mtp draft 1", 1, 1.3)], "varied by 90%"),
    ]
    for rows, want in cases:
        rep = BenchReport(str(stub), 4, 64, 2, rows=rows, recommended=1)
        note = _store(model, 2, costs, rep)
        assert want in note and "measure again" in note and rep.cache_file is None
        assert not draft_cost_cache.exists()
    rows = [_row("plain", 0, 1.0), _row("mtp draft 1", 1, 1.3)]
    # a step with a draft 1.4x cheaper than a plain one: past bench's bound, inside the cache's guard
    cheap = DraftCosts([0.10, 0.07], 0.0, [0.9])
    assert dc.implausible(cheap) is None and "cheaper than a plain step" in dc.implausible(
        cheap, dc.BOUND_SLACK
    )
    rep = BenchReport(str(stub), 4, 64, 2, rows=rows, recommended=1)
    assert "cheaper than a plain step" in _store(model, 2, cheap, rep) and not draft_cost_cache.exists()
    rep = BenchReport(str(stub), 4, 64, 2, rows=rows, recommended=1)
    assert _store(model, 2, costs, rep) == "" and rep.cache_file == str(draft_cost_cache)


def test_bench_with_an_unwritable_cache_still_reports(stub, tmp_path, monkeypatch):
    from qwythos.core.drafting.costs import DraftCosts
    from qwythos.runtime.speed import BenchReport, _store

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("QWYTHOS_DRAFT_COSTS", str(blocker / "draft_costs.json"))
    rep = BenchReport(
        str(stub), 4, 64, 2, rows=[_row("plain", 0, 1.0), _row("mtp draft 1", 1, 1.3)], recommended=1
    )
    note = _store(SimpleNamespace(path=stub, placement=""), 2, DraftCosts([0.1, 0.12], 0.01, [0.6]), rep)
    assert note.startswith("costs not stored") and rep.cache_file is None
