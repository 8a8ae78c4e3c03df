"""Is the installed llama.cpp build safe on this CPU? The AMX guard behind `qwythos doctor`.

Many cloud VMs report Intel AMX in CPUID without letting guests use it. A llama.cpp built natively
on such a machine routes quantized matmuls with batches over one token through ggml's AMX kernels
and dies with SIGILL or SIGSEGV (llama.cpp #20824, Ollama #17006/#17236). A crash inside C takes
the Python process with it, so we find out in a child process: write a tiny Q8_0 model, load it
and decode a batch, once with llama.cpp's default (extra, AMX) buffer types and, if that dies,
once without them. The verdict is cached per build of the shared library.

`safe_model_kwargs()` is what the runtime calls before it loads a model: `{}` when the build is
fine (or has no AMX code at all), `{"use_extra_bufts": False}` when only that keeps it alive.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from qwythos.core.errors import QwythosError
from qwythos.core.fileio import cache_dir
from qwythos.core.llamacpp.log import quiet_llama_logs

# The flags install.sh passes when it builds llama-cpp-python; printed by the doctor as the fix.
NO_AMX_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
REBUILD_COMMAND = (
    f"CMAKE_ARGS=\"-DCMAKE_C_FLAGS='{NO_AMX_FLAGS}' -DCMAKE_CXX_FLAGS='{NO_AMX_FLAGS}'\" "
    "pip install --force-reinstall --no-cache-dir --no-deps --no-binary llama-cpp-python "
    "llama-cpp-python==0.3.36   (or simply: bash install.sh)"
)
PROBE_OK = "QWYTHOS_PROBE_OK"


@dataclass
class ProbeRun:
    """One child process: did loading and decoding survive?"""

    use_extra_bufts: bool
    ok: bool
    returncode: int
    signal: str | None = None
    detail: str = ""


@dataclass
class ProbeResult:
    """The doctor's verdict on the installed build."""

    library: str
    system_info: str
    build_has_amx: bool
    cpu_reports_amx: bool
    runs: list[ProbeRun] = field(default_factory=list)

    @property
    def default_ok(self) -> bool:
        return bool(self.runs) and self.runs[0].ok

    @property
    def fallback_ok(self) -> bool:
        return any(r.ok and not r.use_extra_bufts for r in self.runs)

    @property
    def verdict(self) -> str:
        if not self.runs:
            return "not probed"
        if self.default_ok:
            return "ok"
        if self.fallback_ok:
            return "crashes with AMX kernels; safe (about 30% slower) with use_extra_bufts=False"
        return "crashes"

    def model_kwargs(self) -> dict:
        if self.runs and not self.default_ok and self.fallback_ok:
            return {"use_extra_bufts": False}
        return {}


def _library_path() -> Path:
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    for name in ("libllama.so", "libllama.dylib", "llama.dll"):
        if (lib_dir / name).exists():
            return lib_dir / name
    return Path(llama_cpp.__file__)


def system_info() -> str:
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode(errors="replace")


def cpu_reports_amx() -> bool:
    try:
        return "amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _build_key(lib: Path) -> str:
    st = lib.stat()
    return hashlib.sha256(f"{lib.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def _cache_file() -> Path:
    return cache_dir("probe.json")


def write_probe_model(path: Path, n_embd: int = 256, n_ff: int = 512, n_vocab: int = 512) -> Path:
    """A tiny llama-architecture GGUF with Q8_0 matrices: the smallest input that hits the AMX path."""
    import gguf
    from gguf.quants import quantize

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(n_embd)
    w.add_block_count(1)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(n_embd // 4)
    w.add_tokenizer_model("none")
    w.add_vocab_size(n_vocab)

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)

    def q8(name: str, a: np.ndarray) -> None:
        w.add_tensor(
            name, quantize(a, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0
        )

    w.add_tensor("token_embd.weight", mat(n_vocab, n_embd))
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    q8("output.weight", mat(n_vocab, n_embd))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(n_embd, np.float32))
    for t in ("attn_q", "attn_k", "attn_v", "attn_output"):
        q8(f"blk.0.{t}.weight", mat(n_embd, n_embd))
    q8("blk.0.ffn_gate.weight", mat(n_ff, n_embd))
    q8("blk.0.ffn_up.weight", mat(n_ff, n_embd))
    q8("blk.0.ffn_down.weight", mat(n_embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _child(model_path: str, use_extra_bufts: bool) -> None:
    """Runs in the child: load, decode a batch of 8 and then one token. Prints PROBE_OK if alive."""
    import llama_cpp

    quiet_llama_logs()
    mp = llama_cpp.llama_model_default_params()
    mp.use_extra_bufts = use_extra_bufts
    model = llama_cpp.llama_model_load_from_file(model_path.encode(), mp)
    if not model:
        print("model failed to load")
        sys.exit(3)
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = 64
    cp.n_batch = 16
    cp.n_threads = cp.n_threads_batch = min(2, os.cpu_count() or 1)
    ctx = llama_cpp.llama_init_from_model(model, cp)
    for tokens in ([1, 2, 3, 4, 5, 6, 7, 8], [9]):
        arr = (llama_cpp.llama_token * len(tokens))(*tokens)
        if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, len(tokens))) != 0:
            print("decode failed")
            sys.exit(4)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    print(PROBE_OK)


def _run_child(model_path: Path, use_extra_bufts: bool, timeout: float, python: str) -> ProbeRun:
    code = f"from qwythos.core.llamacpp.probe import _child; _child({str(model_path)!r}, {use_extra_bufts!r})"
    try:
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ProbeRun(use_extra_bufts, False, -1, None, f"timed out after {timeout:.0f} s")
    ok = proc.returncode == 0 and PROBE_OK in proc.stdout
    sig = None
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = str(-proc.returncode)
    detail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] if not ok else []
    return ProbeRun(use_extra_bufts, ok, proc.returncode, sig, detail[0] if detail else "")


def probe_build(timeout: float = 120.0, python: str | None = None, use_cache: bool = True) -> ProbeResult:
    """Probe the installed llama.cpp build in child processes; never crashes the caller."""
    lib = _library_path()
    key = _build_key(lib)
    cache = _cache_file()
    if use_cache and cache.exists():
        try:
            data = json.loads(cache.read_text())
            if data.get("key") == key:
                res = data["result"]
                runs = [ProbeRun(**r) for r in res.pop("runs")]
                return ProbeResult(**res, runs=runs)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    info = system_info()
    result = ProbeResult(str(lib), info.strip(), "AMX" in info, cpu_reports_amx())
    with tempfile.TemporaryDirectory(prefix="qwythos-probe-") as tmp:
        model = write_probe_model(Path(tmp) / "probe-q8_0.gguf")
        first = _run_child(model, True, timeout, python or sys.executable)
        result.runs.append(first)
        if not first.ok:
            result.runs.append(_run_child(model, False, timeout, python or sys.executable))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "result": asdict(result)}))
    except OSError:
        pass
    return result


# --- batched logits on the real file ------------------------------------------------------------
# Found at the 9B shapes (llama-cpp-python 0.3.36, Q4_K_M; an AMD EPYC and an Intel Xeon): with
# llama.cpp's repacked CPU weights (`use_extra_bufts`, the default) a batch that asks for 4 or more
# logit rows after the first position returns all-zero logits; one row at a time is right. Narrowed
# with per-tensor overrides (bench/bench_repack_fault.py): only the recurrent layers' output
# projection (`ssm_out`, Q4_K) does it, and only in a file whose recurrent state grows without bound
# (the random bench file's ssm_a = +1; with ssm_a < 0, as trained models have it, batches agree).
# Tiny models do not show it, so it is checked on the file itself, once per (file, machine, build,
# CPU features): `load_model` compares a 4-row batch with one-row decodes. A file that fails loads
# again with only the suspect weights plain (core/llamacpp/repack.py), checked again; if that still
# fails, without repacked weights at all. QWYTHOS_SKIP_PROBE=1 skips it.

#: Rows of the checked batch, and how far a batched row may sit from its one-row twin (relative
#: to the logits' scale: quantized kernels round differently batched and one-by-one, ~2% at 9B).
BATCH_CHECK_ROWS = 4
BATCH_CHECK_TOLERANCE = 0.25


def logits_agree(batched: np.ndarray, single: np.ndarray, tol: float = BATCH_CHECK_TOLERANCE) -> bool:
    """Whether a batch's logit rows match the same rows decoded one at a time."""
    if batched.shape != single.shape or not np.isfinite(batched).all():
        return False
    if (np.abs(batched).max(axis=1) == 0).any():  # the fault's signature: whole rows of zeros
        return False
    scale = max(float(np.abs(single).max()), 1e-6)
    return float(np.abs(batched - single).max()) <= tol * scale


def _batch_cache() -> Path:
    return _cache_file().with_name("batch_check.json")


def _cpu_key() -> str:
    """The CPU features ggml's kernels are chosen by (AVX2, AVX512, NEON ...): a VM that moves to
    another host CPU checks its files again."""
    return hashlib.sha256(system_info().encode()).hexdigest()[:12]


def _batch_key(gguf: Path) -> str:
    p = Path(gguf).resolve()
    st = p.stat()
    lib = _library_path()
    return f"{p}|{st.st_size}|{st.st_mtime_ns}|{_build_key(lib)}|{os.uname().machine}|{_cpu_key()}"


def _read_batch_cache() -> dict:
    try:
        data = json.loads(_batch_cache().read_text())
    except (OSError, ValueError):
        return {}  # a missing or damaged cache only means checking again
    return data if isinstance(data, dict) else {}


#: A cached verdict: True (repacked weights agree), False (load without any), or the tensor-name
#: patterns kept plain while the rest stay repacked.
Verdict = bool | tuple[str, ...]


def _as_verdict(v: object) -> Verdict | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
        return tuple(v)
    return None  # absent or damaged: check again


def batched_verdict(gguf: Path) -> Verdict | None:
    """The cached verdict for this file, build and CPU (None: not checked yet)."""
    return _as_verdict(_read_batch_cache().get(_batch_key(gguf)))


def batched_failures() -> dict[str, Verdict]:
    """Files whose repacked batched logits failed here (this build), with what was done about it
    (False: no repacked weights; patterns: those tensors plain), for `qwythos doctor`."""
    build = f"|{_build_key(_library_path())}|"
    out = {}
    for k, v in sorted(_read_batch_cache().items()):
        path, verdict = k.split("|", 1)[0], _as_verdict(v)
        if verdict not in (None, True) and build in k and Path(path).exists():
            out[path] = verdict
    return out


def record_batched_verdict(gguf: Path, verdict: Verdict) -> None:
    """Store a verdict (entries of files that no longer exist are dropped)."""
    from qwythos.core.fileio import write_text_atomic

    data = {k: v for k, v in _read_batch_cache().items() if Path(k.split("|", 1)[0]).exists()}
    data[_batch_key(gguf)] = verdict if isinstance(verdict, bool) else list(verdict)
    path = _batch_cache()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(data, indent=1), lock_wait=2.0)
    except (OSError, QwythosError):
        pass  # an unwritable or busy cache only means checking again next time


_SAFE_KWARGS: dict | None = None


def safe_model_kwargs() -> dict:
    """Extra llama model parameters that keep this build alive on this CPU (probed once, cached).

    A build without AMX code cannot hit the AMX crash, so it is not probed at all.
    """
    global _SAFE_KWARGS
    if _SAFE_KWARGS is None:
        if os.environ.get("QWYTHOS_SKIP_PROBE") == "1" or "AMX" not in system_info():
            _SAFE_KWARGS = {}
        else:
            result = probe_build()
            _SAFE_KWARGS = result.model_kwargs()
            if _SAFE_KWARGS:
                warnings.warn(
                    "this llama-cpp-python build crashes in ggml's AMX kernels on this CPU; loading "
                    "with use_extra_bufts=False (about 30% slower). Rebuild for full speed: "
                    + REBUILD_COMMAND,
                    RuntimeWarning,
                    stacklevel=2,
                )
            elif not result.default_ok:
                raise QwythosError(
                    "the installed llama-cpp-python build crashes on this CPU even without AMX buffers",
                    "run `qwythos doctor` for details, then rebuild: " + REBUILD_COMMAND,
                )
    return dict(_SAFE_KWARGS)


if __name__ == "__main__":  # `python -m qwythos.core.llamacpp.probe [--quiet]`, used by install.sh
    outcome = probe_build(use_cache=False)
    if "--quiet" not in sys.argv:
        print(json.dumps(asdict(outcome), indent=2))
    print(f"llama.cpp build probe: {outcome.verdict}")
    sys.exit(0 if outcome.default_ok else 1)
