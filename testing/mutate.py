"""Hostile copies of a valid tiny GGUF, for the untrusted-file tests (tests/test_untrusted_gguf.py).

As llama.cpp's tests/test-gguf.cpp builds handcrafted bad files, `mutations(base)` walks the
header of a valid GGUF byte by byte (`layout`) and sets every field it finds (the counts, each
key's name length and value type, array types and lengths, string lengths, the size keys' values,
each tensor's name length, n_dims, dimensions, type id and data offset) to edge values: 0, -1,
2**31, 2**63, one past the end of the file, and for data offsets the previous tensor's (overlap)
or one byte off (misaligned). A few mutations need a re-encoded header instead of a patched field
(a duplicate tensor name, an integer `general.architecture`, a nextn count past the block count);
`semantic_mutations` writes those through core/gguf/file.py's writer.

Each `Mutation` knows how to write its file (`write(dst)`) and, when the file must be refused,
a fragment the refusal's message contains (`expect`); `expect=None` means only "no crash": the
edge value may happen to leave a loadable file (a context length of 2**31 is a valid UINT32).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from gguf import GGUFValueType

from qwythos.core.gguf.file import KV, RawSource, TensorPlan, read_header, write_gguf

#: the scalar widths of GGUF value types (bytes)
_SCALAR_WIDTH = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
#: the metadata keys whose value is a size the loader reads (their values are mutated too)
SIZE_KEY_SUFFIXES = (
    ".block_count",
    ".nextn_predict_layers",
    ".context_length",
    ".embedding_length",
    ".feed_forward_length",
    ".attention.head_count",
    ".attention.head_count_kv",
    ".attention.key_length",
    ".ssm.group_count",
    ".ssm.time_step_rank",
    ".ssm.inner_size",
    "general.alignment",
)


@dataclass(frozen=True)
class Field:
    """One field of a GGUF header: what it is, where it sits and how wide it is."""

    label: str  # "n_tensors", "kv[3] qwen35.block_count value", "tensor[5] blk.0.ffn_up.weight offset"
    kind: str  # count | key_length | vtype | array_type | array_length | string_length | value | name_length | n_dims | dim | ttype | offset
    offset: int
    width: int
    value: int
    tensor: int = -1  # the tensor info it belongs to (-1: the header or a key/value)


def layout(path: Path) -> list[Field]:
    """Every field of a VALID GGUF's header, in file order (a trusted file: this walker checks
    nothing). Arrays of strings list their first three string lengths only."""
    data = Path(path).read_bytes()
    fields: list[Field] = []
    pos = 4

    tensor = -1

    def field(label: str, kind: str, width: int) -> int:
        nonlocal pos
        fmt = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[width]
        (v,) = struct.unpack_from(fmt, data, pos)
        fields.append(Field(label, kind, pos, width, v, tensor))
        pos += width
        return v

    def string(label: str, kind: str, keep: bool = True) -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", data, pos)
        if keep:
            fields.append(Field(label, kind, pos, 8, n, tensor))
        s = data[pos + 8 : pos + 8 + n].decode("utf-8", "replace")
        pos += 8 + n
        return s

    field("version", "version", 4)
    n_tensors = field("n_tensors", "count", 8)
    n_kv = field("n_kv", "count", 8)
    for i in range(n_kv):
        key = string(f"kv[{i}] name", "key_length")
        vtype = field(f"kv[{i}] {key} type", "vtype", 4)
        if vtype == GGUFValueType.ARRAY:
            sub = field(f"kv[{i}] {key} element type", "array_type", 4)
            n = field(f"kv[{i}] {key} length", "array_length", 8)
            for j in range(n):
                if sub == GGUFValueType.STRING:
                    string(f"kv[{i}] {key}[{j}] length", "string_length", keep=j < 3)
                else:
                    pos += _SCALAR_WIDTH[sub]
        elif vtype == GGUFValueType.STRING:
            string(f"kv[{i}] {key} length", "string_length")
        else:
            w = _SCALAR_WIDTH[vtype]
            if key.endswith(SIZE_KEY_SUFFIXES) and w in (4, 8):
                field(f"kv[{i}] {key} value", "value", w)
            else:
                pos += w
    for i in range(n_tensors):
        tensor = i
        name = string(f"tensor[{i}] name", "name_length")
        nd = field(f"tensor[{i}] {name} n_dims", "n_dims", 4)
        for d in range(nd):
            field(f"tensor[{i}] {name} ne[{d}]", "dim", 8)
        field(f"tensor[{i}] {name} type", "ttype", 4)
        field(f"tensor[{i}] {name} offset", "offset", 8)
    return fields


@dataclass(frozen=True)
class Mutation:
    """One hostile copy of the base file: `write(dst)` writes it; `expect` is a fragment of the
    refusal (None: any outcome but a crash)."""

    name: str
    write: Callable[[Path], Path]
    expect: str | None = None

    def __repr__(self) -> str:
        return self.name


def _patch(base: bytes, f: Field, value: int) -> Callable[[Path], Path]:
    def write(dst: Path) -> Path:
        data = bytearray(base)
        data[f.offset : f.offset + f.width] = (value % (1 << (8 * f.width))).to_bytes(f.width, "little")
        dst.write_bytes(bytes(data))
        return dst

    return write


def _edges(f: Field, size: int) -> list[int]:
    vals = [0, -1, 2**31, size + 1]
    if f.width == 8:
        vals.append(2**63)
    return [v for v in vals if v % (1 << (8 * f.width)) != f.value]


def field_mutations(base: Path, tensors: Collection[int] | None = None) -> Iterator[Mutation]:
    """Every header field of `base` set to each edge value (0, -1, 2**31, 2**63, past the end), and
    each tensor's data offset to the previous tensor's (overlap) and one byte off (misaligned).
    `tensors`: the indices of the tensor infos whose fields to mutate (default all)."""
    data = Path(base).read_bytes()
    fields = layout(base)
    prev_offset: int | None = None
    for f in fields:
        if f.tensor >= 0 and tensors is not None and f.tensor not in tensors:
            if f.kind == "offset":
                prev_offset = f.value
            continue
        for v in _edges(f, len(data)):
            yield Mutation(f"{f.label} = {v}", _patch(data, f, v), _expected(f, v))
        if f.kind == "offset":
            if prev_offset is not None:
                yield Mutation(f"{f.label} overlaps the previous", _patch(data, f, prev_offset), "offset")
            if f.value:
                yield Mutation(f"{f.label} misaligned", _patch(data, f, f.value + 1), "offset")
            prev_offset = f.value


def _expected(f: Field, v: int) -> str | None:
    """What the refusal must say, where the edge value surely breaks the file; None where it may
    leave a loadable one (a size key's value, a string's length that happens to re-parse)."""
    if f.kind == "value":
        if "general.alignment" in f.label:
            return ""
        if f.label.endswith("block_count value"):
            return ""
        if f.label.endswith("nextn_predict_layers value"):
            return "" if v else None  # 0: a head llama.cpp ignores, which inspect reports
        return "" if v == 0 else None
    if f.kind in ("vtype", "array_type") and _SCALAR_WIDTH.get(v % 2**32, -1) == _SCALAR_WIDTH.get(f.value):
        return None  # a scalar type of the same width (BOOL -> UINT8): the file may still parse
    if f.kind in ("count", "key_length", "string_length", "array_length", "name_length", "dim", "n_dims"):
        return "" if v != 0 else None
    return ""  # version, value/array/tensor type ids, data offsets


def semantic_mutations(base: Path) -> list[Mutation]:
    """The cases a patched field cannot make: re-encoded headers through the writer."""
    hdr = read_header(base)
    arch = hdr.kv["general.architecture"]
    bc_key, nextn_key = f"{arch}.block_count", f"{arch}.nextn_predict_layers"
    names = [t.name for t in hdr.tensors]
    twin = next(n for n in names if n.endswith("ffn_up.weight"))

    def rewrite(
        kv: dict[str, KV] | None = None, rename: dict[str, str] | None = None
    ) -> Callable[[Path], Path]:
        def write(dst: Path) -> Path:
            kvs = []
            for k, v in hdr.kv.items():
                vt, sub = hdr.kv_types[k]
                kvs.append(
                    (kv or {}).get(k)
                    or KV(k, GGUFValueType(vt), v, GGUFValueType(sub) if sub is not None else None)
                )
            plans = [
                TensorPlan(
                    (rename or {}).get(t.name, t.name),
                    t.shape,
                    t.ggml_type,
                    t.nbytes,
                    lambda: b"",
                    raw=RawSource(hdr.path, t.offset, t.nbytes),
                )
                for t in hdr.tensors
            ]
            write_gguf(dst, arch, kvs, plans, alignment=hdr.alignment)
            if rename:  # the writer refuses duplicate names: written under a stand-in, then patched
                raw = dst.read_bytes()
                for new in rename.values():
                    raw = raw.replace(new.encode(), twin.encode())
                dst.write_bytes(raw)
            return dst

        return write

    u32 = GGUFValueType.UINT32
    dup_target = next(n for n in names if n.endswith("ffn_up.weight") and n != twin)
    stand_in = twin.replace("blk.", "blq.", 1)  # as long as the twin's name: the patch keeps the layout
    return [
        Mutation(f"{bc_key} = 2**31", rewrite({bc_key: KV(bc_key, u32, 2**31)}), "block_count"),
        Mutation(f"{bc_key} = 513", rewrite({bc_key: KV(bc_key, u32, 513)}), "block_count"),
        Mutation(
            f"{nextn_key} = 7", rewrite({nextn_key: KV(nextn_key, u32, 7)}), "nextn_predict_layers is 7"
        ),
        Mutation(
            "general.architecture = 7 (UINT32)",
            rewrite({"general.architecture": KV("general.architecture", u32, 7)}),
            "general.architecture is a UINT32",
        ),
        Mutation(
            "general.alignment = 3",
            rewrite({"general.alignment": KV("general.alignment", u32, 3)}),
            "power of 2",
        ),
        Mutation(
            f"duplicate tensor name {twin}", rewrite(rename={dup_target: stand_in}), "two tensors are named"
        ),
    ]


def mutations(base: Path, tensors: Collection[int] | None = None) -> list[Mutation]:
    """Every mutation of `base`: its fields at edge values (`tensors`: only these tensor infos')
    and the re-encoded cases."""
    return [*field_mutations(base, tensors), *semantic_mutations(base)]


def base_gguf(dst: Path) -> Path:
    """The valid base: data/tiny-trained converted (trunk and MTP head, 2.8 MB), with an explicit
    `general.alignment` so its value is a field to mutate."""
    from qwythos.convert.text import convert

    src = Path(__file__).resolve().parents[1] / "data" / "tiny-trained"
    tmp = convert(src, dst.with_name(dst.stem + "-plain.gguf")).output
    hdr = read_header(tmp)
    kvs = [
        KV(k, GGUFValueType(vt), v, GGUFValueType(sub) if sub is not None else None)
        for k, v in hdr.kv.items()
        for vt, sub in [hdr.kv_types[k]]
    ]
    kvs.insert(1, KV("general.alignment", GGUFValueType.UINT32, hdr.alignment))
    plans = [
        TensorPlan(
            t.name, t.shape, t.ggml_type, t.nbytes, lambda: b"", raw=RawSource(tmp, t.offset, t.nbytes)
        )
        for t in hdr.tensors
    ]
    write_gguf(dst, hdr.kv["general.architecture"], kvs, plans, alignment=hdr.alignment)
    tmp.unlink()
    return dst
