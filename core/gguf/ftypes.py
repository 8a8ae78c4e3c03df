"""Every llama.cpp file type (ftype) and GGML tensor type, read from the installed build.

The ftype names and numbers come from llama-cpp-python's `LLAMA_FTYPE_*` constants; the GGML
types (name, block size, bytes per block, quantized or not) come from libggml itself through
`ggml_type_name` / `ggml_blck_size` / `ggml_type_size` / `ggml_is_quantized`. Only two things are
ours: which GGML type an ftype uses for its bulk tensors (llama.cpp's default-type switch, written
here as a rule plus its exceptions) and the `Q4_K`-style aliases llama-quantize accepts.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

from qwythos.core.errors import QwythosError

FTYPE_PREFIXES = ("LLAMA_FTYPE_MOSTLY_", "LLAMA_FTYPE_ALL_")
# ftype suffixes that name a mix of one GGML type (Q4_K_M -> q4_K)
MIX_SUFFIXES = ("_S", "_M", "_L", "_XS")
# ftypes whose bulk GGML type does not follow the suffix rule (llama.cpp's default-type switch)
DEFAULT_TYPE_EXCEPTIONS = {
    "IQ2_S": "iq2_xs",
    "IQ2_M": "iq2_s",
    "IQ3_XS": "iq3_s",
    "IQ3_M": "iq3_s",
    "MXFP4_MOE": "mxfp4",
}
# names llama-quantize also accepts
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
# GGML types a tensor may be stored as besides the quantized ones; quantized types never stored
STORABLE_FLOAT = ("f32", "f16", "bf16")
NOT_STORED = ("q8_1", "q8_k")
# GGML types made only with importance-matrix data: every IQ type (llama.cpp refuses the smallest
# ones without; IQ4_XS / IQ3_S it would make blind, where the importance data is what they are
# designed around) ...
IMATRIX_TYPE_PREFIX = "iq"
# ... and file types whose mix llama.cpp refuses without one although their bulk type is a k-quant
IMATRIX_FTYPES = frozenset({"Q2_K_S"})


def ggml_needs_imatrix(t: GGMLType) -> bool:
    """A tensor of this GGML type is made only with importance data for it (every IQ type)."""
    return t.name.lower().startswith(IMATRIX_TYPE_PREFIX)


@dataclass(frozen=True)
class GGMLType:
    id: int
    name: str  # ggml's spelling: "q4_K", "bf16"
    block_size: int
    type_size: int  # bytes per block
    quantized: bool

    @property
    def bpw(self) -> float:
        return 8.0 * self.type_size / self.block_size

    def row_bytes(self, n: int) -> int:
        return (n // self.block_size) * self.type_size


@dataclass(frozen=True)
class FType:
    name: str  # "Q4_K_M"
    id: int  # LLAMA_FTYPE_* value, as written to general.file_type
    default_type: GGMLType  # the type most tensors get

    @property
    def nominal_bpw(self) -> float:
        return self.default_type.bpw

    @property
    def needs_imatrix(self) -> bool:
        return ggml_needs_imatrix(self.default_type) or self.name in IMATRIX_FTYPES


def _libggml() -> ctypes.CDLL:
    from llama_cpp import _ggml

    lib = _ggml.libggml
    for fn, res in (
        ("ggml_type_name", ctypes.c_char_p),
        ("ggml_blck_size", ctypes.c_int64),
        ("ggml_type_size", ctypes.c_size_t),
        ("ggml_is_quantized", ctypes.c_bool),
    ):
        getattr(lib, fn).restype = res
        getattr(lib, fn).argtypes = [ctypes.c_int]
    return lib


@functools.cache
def ggml_types() -> dict[str, GGMLType]:
    """All live GGML types of the installed build, keyed by lower-case name."""
    import llama_cpp

    lib = _libggml()
    out: dict[str, GGMLType] = {}
    for i in range(int(llama_cpp.GGML_TYPE_COUNT)):
        raw = lib.ggml_type_name(i)
        bs = int(lib.ggml_blck_size(i))
        if not raw or bs <= 0:  # removed types
            continue
        name = raw.decode()
        out[name.lower()] = GGMLType(i, name, bs, int(lib.ggml_type_size(i)), bool(lib.ggml_is_quantized(i)))
    return out


def ggml_type_by_id(type_id: int) -> GGMLType:
    for t in ggml_types().values():
        if t.id == type_id:
            return t
    raise KeyError(type_id)


def _bulk_type_name(ftype_name: str) -> str:
    if ftype_name in DEFAULT_TYPE_EXCEPTIONS:
        return DEFAULT_TYPE_EXCEPTIONS[ftype_name]
    if ftype_name == "F32":
        return "f32"
    base = ftype_name
    for suffix in MIX_SUFFIXES:
        if base.endswith(suffix) and base[: -len(suffix)].lower() in ggml_types():
            base = base[: -len(suffix)]
            break
    return base.lower()


@functools.cache
def ftypes() -> dict[str, FType]:
    """Every ftype the installed llama.cpp can write, keyed by llama-quantize's name."""
    import llama_cpp

    types = ggml_types()
    out: dict[str, FType] = {}
    for attr in dir(llama_cpp):
        prefix = next((p for p in FTYPE_PREFIXES if attr.startswith(p)), None)
        if prefix is None:
            continue
        name = attr[len(prefix) :]
        bulk = types.get(_bulk_type_name(name))
        if bulk is None:
            continue
        out[name] = FType(name, int(getattr(llama_cpp, attr)), bulk)
    return dict(sorted(out.items(), key=lambda kv: (kv[1].nominal_bpw, kv[0])))


def ftype_by_id(ftype_id: int) -> FType | None:
    return next((f for f in ftypes().values() if f.id == ftype_id), None)


def parse_ftype(name: str) -> FType:
    """`q4_k_m` -> FType Q4_K_M; an unknown name lists the valid ones."""
    key = name.strip().upper()
    key = ALIASES.get(key, key)
    table = ftypes()
    if key not in table:
        raise QwythosError(
            f"unknown quantization type {name!r}",
            "valid types: " + ", ".join(table) + " (aliases: " + ", ".join(ALIASES) + ")",
        )
    return table[key]


def parse_types(spec: str | list[str]) -> list[FType]:
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[FType] = []
    for item in items:
        if item.strip():
            ft = parse_ftype(item)
            if ft not in out:
                out.append(ft)
    if not out:
        raise QwythosError("no quantization type given", "e.g. --types Q4_K_M,Q8_0")
    return out


def parse_ggml_type(name: str, what: str = "tensor type") -> GGMLType:
    """`Q8_0` / `bf16` -> GGMLType; an unknown name lists the valid ones."""
    valid = {
        n: t for n, t in ggml_types().items() if n in STORABLE_FLOAT or (t.quantized and n not in NOT_STORED)
    }
    t = valid.get(name.strip().lower())
    if t is None:
        raise QwythosError(f"unknown {what} {name!r}", "valid types: " + ", ".join(valid))
    return t
