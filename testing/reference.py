"""llama.cpp's own converter, run as a reference (dev/test only; needs torch).

The vendored llama.cpp (from the llama-cpp-python sdist) is only read and executed here, in a
subprocess, never imported into qwythos.

Pre-tokenizer detection: the converter identifies a BPE pre-tokenizer by hashing the tokenization
of a fixed test string (`get_vocab_base_pre`, "chkhsh") and raises NotImplementedError for an
unknown hash. Our tiny fixture tokenizer uses Qwen3.5's regex but a 1000-token vocabulary, so its
hash is unknown. The subprocess therefore runs a small wrapper that falls back to "qwen35" when
(and only when) the hash is not recognised - the same value our converter writes for this arch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from qwythos.core.errors import QwythosError
from qwythos.core.fileio import cache_dir

#: Where install.sh unpacks the llama-cpp-python source distribution, inside the cache folder.
SDIST_TREE = "src/llama_cpp_python-0.3.36/vendor/llama.cpp"
ENV_VAR = "QWYTHOS_LLAMA_CPP_SRC"
FALLBACK_PRE = "qwen35"

_WRAPPER = r"""
import runpy, sys
src, fallback_pre = sys.argv[1], sys.argv[2]
sys.path.insert(0, src + "/gguf-py")  # the vendored gguf-py, before anything imports PyPI's gguf
sys.path.insert(0, src)
import conversion.base as base

_orig = base.TextModel.get_vocab_base_pre

def _pre(self, tokenizer):
    try:
        return _orig(self, tokenizer)
    except NotImplementedError:
        return fallback_pre

base.TextModel.get_vocab_base_pre = _pre
sys.argv = [src + "/convert_hf_to_gguf.py"] + sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def default_source() -> Path:
    """The tree install.sh unpacked: in the cache folder, by core/fileio.cache_dir's rule (which
    install.sh follows too). The test suite records it before pointing QWYTHOS_CACHE elsewhere."""
    return cache_dir(*SDIST_TREE.split("/"))


def llama_cpp_source() -> Path:
    """The vendored llama.cpp tree ($QWYTHOS_LLAMA_CPP_SRC, else the sdist in the cache folder)."""
    src = Path(os.environ.get(ENV_VAR) or default_source())
    if not (src / "convert_hf_to_gguf.py").is_file() or not (src / "gguf-py").is_dir():
        raise QwythosError(
            f"llama.cpp source not found at {src} (need convert_hf_to_gguf.py and gguf-py/)",
            f"unpack the llama-cpp-python 0.3.36 sdist there, or set {ENV_VAR} to its vendor/llama.cpp",
        )
    return src


def reference_available() -> bool:
    """True when the reference converter can run here (source tree present, torch importable)."""
    try:
        llama_cpp_source()
        import torch  # noqa: F401
    except (QwythosError, ImportError):
        return False
    return True


def run_reference_converter(
    model_dir: str | Path,
    out_file: str | Path,
    outtype: str = "bf16",
    extra_args: Sequence[str] = (),
    *,
    fallback_pre: str = FALLBACK_PRE,
    timeout: float = 600,
) -> Path:
    """Convert an HF folder with llama.cpp's convert_hf_to_gguf.py; return the written GGUF path.

    Raises QwythosError with the converter's log tail when it fails."""
    src = llama_cpp_source()
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-c",
        _WRAPPER,
        str(src),
        fallback_pre,
        str(model_dir),
        "--outfile",
        str(out),
        "--outtype",
        outtype,
        *extra_args,
    ]
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise QwythosError(
            f"llama.cpp's converter failed on {model_dir} (exit {proc.returncode}):\n{tail}",
            "check the checkpoint; run the command by hand to see the full log",
        )
    return out


def run_reference_mmproj(model_dir: str | Path, out_file: str | Path, outtype: str = "f16", **kw) -> Path:
    """llama.cpp's `convert_hf_to_gguf.py --mmproj`: the vision projector GGUF, written to `out_file`
    (an explicit --outfile keeps its name; llama.cpp adds the `mmproj-` prefix only to a folder)."""
    return run_reference_converter(model_dir, out_file, outtype, ["--mmproj"], **kw)
