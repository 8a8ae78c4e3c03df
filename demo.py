"""`qwythos demo`: the whole mission on the bundled trained tiny model, with no network.

The bundled `data/tiny-trained` folder is a small Qwen3.5-architecture model in the real HF layout
whose trunk and MTP head were trained on this machine's CPU (scripts/train_tiny.py). The demo does
to it what a user does to Qwythos-9B:

1. convert the safetensors to a BF16 GGUF *without* the head (as the Qwythos release converts);
2. quantize that trunk (Q8_0 and Q4_K_M by default) with llama.cpp's quantizer;
3. restore the MTP head from the checkpoint into the first quantized file (the head stays BF16);
4. validate the head: structure, then acceptance per draft depth on the bundled calibration text;
5. generate from a few prompts with plain decoding and with MTP drafts, and compare the tokens.

Everything lands in one work folder; `DemoReport` holds every number the table shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qwythos.runtime.speed import BenchRow

BUNDLED_MODEL = Path(__file__).resolve().parent / "data" / "tiny-trained"
DEMO_TYPES = ("Q8_0", "Q4_K_M")
DEMO_PROMPTS = (
    "def main():\n    ",
    "import os\nimport sys\n\n\nclass ",
    "    for i in range(",
)


@dataclass
class DemoFile:
    step: str
    path: str
    bytes: int
    seconds: float


@dataclass
class DemoReport:
    work_dir: str
    files: list[DemoFile] = field(default_factory=list)
    acceptance_per_depth: list[float] = field(default_factory=list)
    expected_accepted_length: float = 0.0
    validation_passed: bool = False
    runs: list[BenchRow] = field(default_factory=list)  # --no-mtp, plain (head loaded), each draft length
    sample_text: str = ""

    @property
    def identical(self) -> bool:
        return all(r.same_output for r in self.runs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["identical"] = self.identical
        return d


def run_demo(
    work_dir: str | Path,
    *,
    source: str | Path = BUNDLED_MODEL,
    types: tuple[str, ...] = DEMO_TYPES,
    drafts: tuple[int, ...] = (1, 2, 3),
    max_tokens: int = 48,
    threads: int | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> DemoReport:
    """Run convert -> quantize -> mtp restore -> validate -> generate (plain and MTP) in work_dir."""
    from qwythos.convert.text import convert
    from qwythos.core.fileio import ensure_writable_dir
    from qwythos.core.llamacpp.handles import load_model
    from qwythos.mtp.restore import restore
    from qwythos.mtp.validate import validate
    from qwythos.quantize.pipeline import quantize
    from qwythos.runtime.speed import bench_model

    work = Path(work_dir)
    ensure_writable_dir(work, "demo folder")
    rep = DemoReport(str(work))

    def step(name: str, fn: Callable[[], Path]) -> Path:
        log(name)
        t0 = time.perf_counter()
        path = Path(fn())
        rep.files.append(DemoFile(name, str(path), path.stat().st_size, time.perf_counter() - t0))
        return path

    trunk = step(
        "convert (no head)",
        lambda: convert(source, work / "tiny-trained-BF16.gguf", mtp=False, force=True).output,
    )
    log("quantize " + ",".join(types))
    q = quantize(trunk, work, types=list(types), threads=threads)
    for o in q.outputs:
        rep.files.append(DemoFile(f"quantize {o.type}", o.path, o.bytes, o.seconds))
    quant = Path(q.outputs[0].path)
    full = step(
        "mtp restore (BF16 head)",
        lambda: restore(quant, source, work / f"{quant.stem}-MTP.gguf", force=True).output,
    )

    log("mtp validate")
    v = validate(full, depth=max(drafts))
    rep.acceptance_per_depth = [r.rate for r in v.depths]
    rep.expected_accepted_length = v.expected_accepted_length or 0.0
    rep.validation_passed = v.passed

    log("generate: plain and MTP")
    model = load_model(full)
    plain = load_model(full, mtp=False)  # what a user would run otherwise: the speed-ups' baseline
    try:
        bench = bench_model(
            model,
            drafts=drafts,
            prompts=DEMO_PROMPTS,
            max_tokens=max_tokens,
            threads=threads,
            n_ctx=512,
            auto=False,
            baseline=plain,
        )
        rep.sample_text = DEMO_PROMPTS[0] + bench.rows[0].first_text
        rep.runs = bench.rows
    finally:
        model.close()
        plain.close()
    return rep
