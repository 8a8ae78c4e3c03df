"""Convert a random-weight checkpoint with the exact Qwythos-9B shapes; print time, GB/s and peak RSS,
beside llama.cpp's own converter on the same input (`--reference`).

    nice -n 10 python bench/bench_convert.py [--dir /tmp/qwythos-bench-9b] [--scale 1.0] [--reference] [--keep]

Needs ~18 GB of disk for the checkpoint and ~18 GB per output (outputs are deleted after each run;
the checkpoint too unless --keep). Each converter runs in a child process; peak RSS is the child's
ru_maxrss. Target (issue #2): peak RSS <= 1 GiB, wall time <= 2/3 of llama.cpp's converter.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "data" / "qwythos-9b-config.json"

OURS = """
import sys
from qwythos.convert.text import convert
convert(sys.argv[1], sys.argv[2], outtype=sys.argv[3], force=True)
"""


REFERENCE = """
import sys
from pathlib import Path
try:
    from qwythos.testing.reference import run_reference_converter
except ImportError:  # run llama.cpp's converter directly; a random checkpoint's tokenizer is not Qwen's
    import runpy
    src = Path("/root/.cache/qwythos/src/llama_cpp_python-0.3.36/vendor/llama.cpp")
    sys.path[:0] = [str(src), str(src / "gguf-py")]
    import conversion.base as base
    base.TextModel.get_vocab_base_pre = lambda self, tok: "qwen35"

    def run_reference_converter(d, o, outtype="bf16"):
        sys.argv = ["convert_hf_to_gguf.py", str(d), "--outfile", str(o), "--outtype", outtype]
        runpy.run_path(str(src / "convert_hf_to_gguf.py"), run_name="__main__")
run_reference_converter(Path(sys.argv[1]), Path(sys.argv[2]), outtype=sys.argv[3])
"""


def fallback_config() -> dict:
    """The 9B shapes (from MODEL_FACTS) when data/qwythos-9b-config.json is not there yet."""
    n = 32
    text = {
        "vocab_size": 248320,
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": n,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "linear_num_key_heads": 16,
        "linear_num_value_heads": 32,
        "linear_key_head_dim": 128,
        "linear_value_head_dim": 128,
        "linear_conv_kernel_dim": 4,
        "max_position_embeddings": 1048576,
        "rms_norm_eps": 1e-6,
        "full_attention_interval": 4,
        "layer_types": ["linear_attention" if (i + 1) % 4 else "full_attention" for i in range(n)],
        "mtp_num_hidden_layers": 1,
        "rope_parameters": {
            "rope_type": "yarn",
            "rope_theta": 10000000.0,
            "partial_rotary_factor": 0.25,
            "mrope_section": [11, 11, 10],
            "mrope_interleaved": True,
            "factor": 4.0,
            "original_max_position_embeddings": 262144,
        },
    }
    return {
        "architectures": ["Qwen3_5ForConditionalGeneration"],
        "model_type": "qwen3_5",
        "text_config": text,
    }


def scaled(config: dict, scale: float) -> dict:
    if scale >= 1.0:
        return config
    c = json.loads(json.dumps(config))
    t = c["text_config"]
    t["num_hidden_layers"] = max(4, int(t["num_hidden_layers"] * scale) // 4 * 4)
    t["layer_types"] = t["layer_types"][: t["num_hidden_layers"]]
    return c


def tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """HF names and shapes of a Qwen3.5 text checkpoint (+ MTP head), from the qwen35 table."""
    from qwythos.core.model import qwen35

    cfg = qwen35.text_config_from(config)
    full = {k for k in qwen35.LAYER_RULES if not k.startswith("linear_attn.")}
    out: dict[str, tuple[int, ...]] = {}
    for name, rule in qwen35.GLOBAL_RULES.items():
        out[name.replace("model.", "model.language_model.", 1) if name.startswith("model.") else name] = (
            rule.shape(cfg)
        )
    for i, kind in enumerate(cfg.layer_types):
        for suffix, rule in qwen35.LAYER_RULES.items():
            if (suffix in full) != (kind == "full_attention") and not suffix.startswith(
                ("mlp.", "input_", "post_")
            ):
                continue
            out[f"model.language_model.layers.{i}.{suffix}"] = rule.shape(cfg)
    for k in range(cfg.mtp_layers):
        out |= {f"mtp.{n[4:]}": r.shape(cfg) for n, r in qwen35.MTP_RULES.items()}
        out |= {f"mtp.layers.{k}.{s}": qwen35.LAYER_RULES[s].shape(cfg) for s in full}
    return out


def build_fallback(folder: Path, config: dict, shard_bytes: int = 4 * 10**9) -> None:
    """Random-ish bf16 shards written as raw safetensors (one 64 MB random block, reused)."""
    import numpy as np
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder.mkdir(parents=True, exist_ok=True)
    block = (np.random.default_rng(0).standard_normal(32 * 2**20).astype(np.float32) * 0.02).view(np.uint32)
    block = (block >> 16).astype(np.uint16).tobytes()
    shapes = tensor_shapes(config)
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        n = 2 * int(np.prod(shape))
        if size + n > shard_bytes and shards[-1]:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    wmap = {}
    for i, names in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {}, 0
        for name in sorted(names):
            n = 2 * int(np.prod(shapes[name]))
            header[name] = {"dtype": "BF16", "shape": list(shapes[name]), "data_offsets": [off, off + n]}
            off += n
            wmap[name] = fname
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / fname, "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
            for name in sorted(names):
                left = 2 * int(np.prod(shapes[name]))
                while left:
                    k = min(left, len(block))
                    f.write(block[:k])
                    left -= k
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    (folder / "config.json").write_text(json.dumps(config))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(
        ["hello world"] * 10, trainers.BpeTrainer(vocab_size=300, initial_alphabet=alphabet)
    )
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<|im_end|>", "chat_template": "{{ x }}"})
    )


def build(folder: Path, config: dict) -> None:
    if (folder / "config.json").is_file() and (folder / "model.safetensors.index.json").is_file():
        print(f"reusing checkpoint in {folder}")
        return
    t0 = time.perf_counter()
    try:
        from qwythos.testing.tiny import build_checkpoint_from_config
    except ImportError:
        build_fallback(folder, config)
    else:
        build_checkpoint_from_config(folder, config, seed=0, dtype="bf16")
    print(f"built random checkpoint in {folder} in {time.perf_counter() - t0:.0f} s")


def run_child(code: list[str]) -> tuple[float, float, int]:
    """(seconds, peak RSS GiB, returncode) of a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    p = subprocess.run(code, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if p.returncode:
        print(p.stderr[-3000:], file=sys.stderr)
    if peak <= before:
        print("note: peak RSS not above an earlier child's; the figure is a lower bound", file=sys.stderr)
    return dt, peak / 2**20, p.returncode


def drop_caches_hint() -> None:
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            os.sync()
            f.write("1\n")
    except OSError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/qwythos-bench-9b"))
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: beside --dir)")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the 32 layers (quick runs)")
    ap.add_argument("--outtype", default="bf16")
    ap.add_argument("--reference", action="store_true", help="also time llama.cpp's convert_hf_to_gguf.py")
    ap.add_argument("--keep", action="store_true", help="keep the random checkpoint")
    args = ap.parse_args()

    config = json.loads(CONFIG.read_text()) if CONFIG.is_file() else fallback_config()
    config = scaled(config, args.scale)
    build(args.dir, config)
    src_bytes = sum(p.stat().st_size for p in args.dir.glob("*.safetensors"))
    out_dir = args.out or args.dir.parent
    rows = []

    ours = out_dir / "bench-ours.gguf"
    drop_caches_hint()
    dt, rss, rc = run_child([sys.executable, "-c", OURS, str(args.dir), str(ours), args.outtype])
    size = ours.stat().st_size if ours.exists() else 0
    rows.append(("qwythos convert", dt, rss, size, rc))
    ours.unlink(missing_ok=True)

    if args.reference:
        ref = out_dir / "bench-ref.gguf"
        code = REFERENCE
        drop_caches_hint()
        dt, rss, rc = run_child([sys.executable, "-c", code, str(args.dir), str(ref), args.outtype])
        size = ref.stat().st_size if ref.exists() else 0
        rows.append(("llama.cpp convert_hf_to_gguf.py", dt, rss, size, rc))
        ref.unlink(missing_ok=True)

    print(f"\ninput: {src_bytes / 1e9:.2f} GB safetensors ({args.dir}), outtype {args.outtype}")
    print(f"{'converter':34s} {'seconds':>8s} {'GB/s':>6s} {'peak RSS GiB':>13s} {'output GB':>10s} rc")
    for name, dt, rss, size, rc in rows:
        print(f"{name:34s} {dt:8.1f} {size / 1e9 / dt:6.2f} {rss:13.2f} {size / 1e9:10.2f} {rc}")
    if len(rows) == 2 and rows[1][1] > 0:
        print(
            f"time ratio ours/reference: {rows[0][1] / rows[1][1]:.2f} (target <= 0.67); peak RSS target <= 1 GiB"
        )
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
