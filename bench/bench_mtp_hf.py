"""Time `qwythos mtp restore --hf` and `qwythos mtp check` at the exact Qwythos-9B shapes.

Builds (once, in --work) a random-weight 9B checkpoint in the Qwythos layout (config promises the
head, no mtp.* tensors) and a base-layout folder holding only config + the head's shard, then
restores the head into a new folder (trunk shards hard-linked) and checks it. Prints numbers.

    nice -n 10 python bench/bench_mtp_hf.py --work /tmp/bench-mtp-hf [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from qwythos.mtp.hf_check import check_hf
from qwythos.mtp.hf_out import restore_hf
from qwythos.testing.tiny import (
    build_checkpoint_from_config,
    mtp_tensor_specs,
    random_chunks,
    write_checkpoint,
)

CONFIG = Path(__file__).resolve().parents[1] / "data" / "qwythos-9b-config.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument(
        "--trunk", action="store_true", help="also build the full 9B trunk (19 GB) instead of a stub"
    )
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    config = json.loads(CONFIG.read_text())
    trunk = work / "trunk"
    if not trunk.exists():
        t0 = time.perf_counter()
        if args.trunk:
            build_checkpoint_from_config(trunk, config, include_mtp=False, with_tokenizer=False)
        else:  # the trunk's bytes are only linked: a stub with the real names of two tensors is enough
            write_checkpoint(
                trunk,
                config,
                {"lm_head.weight": [[0.0]], "model.language_model.norm.weight": [0.0]},
                with_tokenizer=False,
            )
        print(f"trunk built in {time.perf_counter() - t0:.1f} s")
    head = work / "base-head"
    if not head.exists():
        t0 = time.perf_counter()
        specs = mtp_tensor_specs(config)
        tensors = {
            s.name: (s.shape, lambda s=s: __import__("numpy").concatenate(list(random_chunks(s, 0))))
            for s in specs
        }
        write_checkpoint(head, config, tensors, max_shard_bytes=2**40, with_tokenizer=False)
        print(f"head source built in {time.perf_counter() - t0:.1f} s")
    out = work / "restored"
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    r = restore_hf(trunk, head, out)
    t_restore = time.perf_counter() - t0
    head_bytes = (out / r.shard).stat().st_size
    t0 = time.perf_counter()
    rep = check_hf(out)
    t_check = time.perf_counter() - t0
    print(
        f"restore --hf: {t_restore:.2f} s, head shard {head_bytes / 2**30:.3f} GiB ({len(r.head_tensors)} tensors), trunk {r.link_mode}"
    )
    print(f"mtp check: {t_check:.2f} s, ok={rep.ok}, issues={[(i.where, i.problem) for i in rep.issues]}")
    if not args.keep:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
