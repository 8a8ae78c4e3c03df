"""Hostile GGUF headers (issue 22): every field of a valid tiny GGUF set to edge values
(testing/mutate.py) ends in one QwythosError naming the file, never a traceback, hang or signal.

The library gates run in-process on a sample of the mutations (every header and key/value field,
the fields of a few tensor infos); the CLI commands (inspect, export, mtp restore, quantize, run)
run in subprocesses on a representative set, each under a wall-clock timeout and an address-space
limit, so a header that drives allocation or hangs fails the test instead of the machine.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from qwythos.core.errors import QwythosError
from qwythos.core.gguf.view import read_view
from qwythos.core.model.structure import check_model
from qwythos.core.model.summary import exportable, summarize
from qwythos.testing import mutate

#: the address space a CLI child may take (the 2**31-layer file once took 11 GB)
CHILD_MEMORY = 3 * 2**30
#: the wall-clock limit of one CLI child (a refusal takes about a second)
CHILD_TIMEOUT = 60


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    b = mutate.base_gguf(tmp_path_factory.mktemp("mutate") / "base.gguf")
    assert summarize(b).ok  # the base is sound: every refusal below is the mutation's
    return b


def _sample(base: Path) -> list[mutate.Mutation]:
    n = len(read_view(base).tensors)
    return mutate.mutations(base, tensors={0, 1, n // 2, n - 1})


def _refusal(path: Path, gate: str) -> str | None:
    """The message a gate refuses `path` with, None when it accepts it; anything but a
    QwythosError propagates (and fails the test)."""
    try:
        view = read_view(path)
        if gate == "inspect":
            s = summarize(view)
            return s.issues[0] if s.issues else None
        exportable(view)
        return None
    except QwythosError as e:
        assert str(path) in e.message or path.name in e.message, e.message
        assert e.hint, e.message
        return str(e)


def test_every_field_at_edge_values_is_refused_cleanly(base: Path, tmp_path: Path) -> None:
    muts = _sample(base)
    assert len(muts) > 400
    unrefused = []
    for m in muts:
        p = m.write(tmp_path / "m.gguf")
        for gate in ("inspect", "export"):
            msg = _refusal(p, gate)
            if m.expect is None:
                continue
            if msg is None:
                if gate == "inspect":  # the exports leave tensor-table completeness to inspect
                    unrefused.append(f"{m.name}: {gate} accepted it")
            elif m.expect not in msg:
                unrefused.append(f"{m.name}: {gate} said {msg!r}, expected {m.expect!r}")
    assert not unrefused, unrefused[:20]


@pytest.mark.parametrize(
    "which, fragment",
    [
        ("block_count = 2**31", "qwen35.block_count is 2147483648; llama.cpp loads 1 to 512 blocks"),
        ("block_count = 513", "qwen35.block_count is 513"),
        ("nextn_predict_layers = 7", "qwen35.nextn_predict_layers is 7 but qwen35.block_count is 5"),
        ("general.architecture = 7", "general.architecture is a UINT32 (7), not a string"),
        ("general.alignment = 3", "general.alignment is 3, not a power of 2"),
        ("duplicate tensor name", "two tensors are named blk.0.ffn_up.weight"),
    ],
)
def test_re_encoded_headers_name_the_problem(base: Path, tmp_path: Path, which: str, fragment: str) -> None:
    m = next(m for m in mutate.semantic_mutations(base) if which in m.name)
    p = m.write(tmp_path / "m.gguf")
    for gate in ("inspect", "export"):
        msg = _refusal(p, gate)
        assert msg is not None and fragment in msg, (gate, msg)
        assert "blk.-" not in msg


def test_hparams_gate_runs_before_the_table_is_built(base: Path, tmp_path: Path) -> None:
    """2**31 layers: the structural check answers from the header alone (no per-layer table)."""
    m = next(m for m in mutate.semantic_mutations(base) if "2**31" in m.name)
    issues = check_model(m.write(tmp_path / "m.gguf"))
    assert [str(i) for i in issues] == [
        "qwen35.block_count is 2147483648; llama.cpp loads 1 to 512 blocks (LLAMA_MAX_LAYERS)"
    ]


def test_overlap_and_past_eof(base: Path, tmp_path: Path) -> None:
    hdr = read_view(base).header
    muts = {m.name: m for m in mutate.field_mutations(base, tensors={1, len(hdr.tensors) - 1})}
    t1 = hdr.tensors[1].name
    overlap = muts[f"tensor[1] {t1} offset overlaps the previous"].write(tmp_path / "o.gguf")
    with pytest.raises(QwythosError, match=f"tensor {t1}'s data starts at offset 0, expected"):
        read_view(overlap)
    misaligned = muts[f"tensor[1] {t1} offset misaligned"].write(tmp_path / "a.gguf")
    with pytest.raises(QwythosError, match="each aligned to 32 bytes"):
        read_view(misaligned)
    last = hdr.tensors[-1]
    size = base.stat().st_size
    # the last tensor's first dimension past the end of the file: its data would run past EOF
    dim = next(
        k for k in muts if k.startswith(f"tensor[{len(hdr.tensors) - 1}] {last.name} ne[0] = {size + 1}")
    )
    with pytest.raises(QwythosError, match="truncated|not a multiple"):
        read_view(muts[dim].write(tmp_path / "e.gguf"))


def test_counts_past_the_file_allocate_nothing(base: Path, tmp_path: Path) -> None:
    """A count or length of 2**63 is refused from the file's size, before any allocation."""
    muts = {m.name: m for m in mutate.field_mutations(base, tensors={0})}
    for name, fragment in (
        ("n_tensors = 9223372036854775808", "claims 9223372036854775808 tensors"),
        ("n_kv = 9223372036854775808", "claims 9223372036854775808 key/value pairs"),
        ("kv[0] name = 9223372036854775808", "the name of key/value 0 claims"),
    ):
        with pytest.raises(QwythosError, match=fragment):
            read_view(muts[name].write(tmp_path / "m.gguf"))
    tokens = next(k for k in muts if "tokenizer.ggml.tokens length = 9223372036854775808" in k)
    with pytest.raises(QwythosError, match="array tokenizer.ggml.tokens claims"):
        read_view(muts[tokens].write(tmp_path / "m.gguf"))


# ---------------------------------------------------------------- the CLI, in subprocesses


def _limit_memory() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


COMMANDS = {
    "inspect": lambda f, base, out: ["inspect", str(f)],
    "export": lambda f, base, out: ["export", "ollama", str(f), "-o", str(out / "Modelfile")],
    "restore": lambda f, base, out: [
        "mtp",
        "restore",
        str(f),
        "--from",
        str(base),
        "-o",
        str(out / "r.gguf"),
    ],
    "quantize": lambda f, base, out: ["quantize", str(f), "-o", str(out), "--types", "Q8_0"],
    "run": lambda f, base, out: ["run", str(f), "-p", "hi", "--max-tokens", "1"],
}
CLI_CASES = ("block_count = 2**31", "duplicate tensor name", "general.alignment = 3", "n_kv = -1")


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_commands_refuse_in_one_message(base: Path, tmp_path: Path, case: str) -> None:
    if case.startswith("n_kv"):
        m = next(m for m in mutate.field_mutations(base, tensors=()) if m.name == "n_kv = -1")
    else:
        m = next(m for m in mutate.semantic_mutations(base) if case in m.name)
    bad = m.write(tmp_path / "bad.gguf")
    before = bad.read_bytes()
    env = {**os.environ, "COLUMNS": "400", "QWYTHOS_THREADS": "1"}
    for name, args in COMMANDS.items():
        out = tmp_path / f"out-{name}"
        out.mkdir()
        p = subprocess.run(
            [sys.executable, "-m", "qwythos.cli", *args(bad, base, out)],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            env=env,
            preexec_fn=_limit_memory,
        )
        assert p.returncode == 1, (name, p.returncode, p.stderr[-2000:])  # not a signal (< 0)
        assert "Traceback" not in p.stderr and "GGML_ASSERT" not in p.stderr, (name, p.stderr[-2000:])
        assert p.stderr.count("error:") == 1 and bad.name in p.stderr, (name, p.stderr[-2000:])
        assert not any(out.iterdir()), (name, list(out.iterdir()))
    assert bad.read_bytes() == before  # the input is never modified
