"""One GGUF against another written by llama.cpp's own converter (convert_hf_to_gguf.py): same
metadata keys (in order), types and values, provenance keys (general.name and other general.*
naming) aside; same tensor names (in order), types, shapes and bytes. Read with gguf-py's
GGUFReader, a reader independent of ours.

`ulp_tolerant` names tensors (by suffix) whose float32 values may differ by 1 ulp: llama.cpp
computes `ssm_a` = -exp(A_log) with torch's float32 exp, which is not correctly rounded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: the general.* keys that say what the file is (compared); the others name where it came from
PROVENANCE_KEEP = frozenset(
    {
        "general.architecture",
        "general.type",
        "general.file_type",
        "general.quantization_version",
        "general.alignment",
    }
)


def comparable_kvs(path: Path) -> dict:
    """Key -> (types, value) of every metadata key but the GGUF.* and provenance ones, in order."""
    from gguf import GGUFReader

    return {
        f.name: (list(f.types), f.contents())
        for f in GGUFReader(path).fields.values()
        if not f.name.startswith("GGUF.") and (not f.name.startswith("general.") or f.name in PROVENANCE_KEEP)
    }


def assert_same_gguf(ours: Path, ref: Path, *, ulp_tolerant: tuple[str, ...] = ()) -> None:
    """AssertionError naming the first key or tensor where `ours` and `ref` differ."""
    from gguf import GGUFReader

    ka, kb = comparable_kvs(ours), comparable_kvs(ref)
    assert list(ka) == list(kb), f"metadata keys: ours-only {set(ka) - set(kb)}, ref-only {set(kb) - set(ka)}"
    for k in ka:
        assert ka[k] == kb[k], f"metadata {k}: ours {str(ka[k])[:200]} != ref {str(kb[k])[:200]}"
    a, b = GGUFReader(ours), GGUFReader(ref)
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for ta, tb in zip(a.tensors, b.tensors, strict=True):
        assert ta.tensor_type == tb.tensor_type, ta.name
        assert list(ta.shape) == list(tb.shape), ta.name
        xa, xb = ta.data.tobytes(), tb.data.tobytes()
        if xa == xb:
            continue
        assert ulp_tolerant and ta.name.endswith(ulp_tolerant), f"tensor {ta.name} bytes differ"
        ia, ib = np.frombuffer(xa, np.int32), np.frombuffer(xb, np.int32)
        assert np.abs(ia.astype(np.int64) - ib).max() <= 1, f"{ta.name} differs by more than 1 ulp"
