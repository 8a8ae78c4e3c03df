"""Make the tiny "fine-tuned" model that shows what `qwythos mtp fit` is for.

Qwythos-9B is Qwen3.5-9B fine-tuned on other text, and the head users can restore was trained with
the base trunk. This does the same at tiny scale: it continues training data/tiny-trained's trunk
(trained on Python source) on English prose - the Python documentation topics that ship with every
Python (`pydoc_data.topics`) - and leaves the MTP head untouched. The head then drafts worse for
the trunk it now serves, which `mtp fit` repairs.

The split is by topic name (crc32 % 10 == 0 held out). The result is saved in the same HF layout as
data/tiny-trained (trunk shard + the original, untouched mtp.* shard), so the converter, the
runtime and the tests read it the same way. `--texts-out DIR` writes the train / held-out text as
files (the `mtp fit --text` input and the `mtp validate --text` input of the README table).

    nice -n 5 python scripts/finetune_tiny.py --out data/tiny-finetuned
    python scripts/finetune_tiny.py --texts-only --texts-out /tmp/ft-texts
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import train_tiny as tt  # noqa: E402

HELD_OUT_CHARS = 24_000  # held-out prose kept with the model (validate reads ~4k tokens of it)


def topics() -> tuple[list[str], list[str]]:
    """(train, held-out) documentation topics, split by topic name."""
    from pydoc_data.topics import topics as all_topics

    names = sorted(all_topics)
    train = [all_topics[n] for n in names if zlib.crc32(n.encode()) % 10 != 0]
    held = [all_topics[n] for n in names if zlib.crc32(n.encode()) % 10 == 0]
    return train, held


def finetune_trunk(model, stream, steps: int, seq: int, bsz: int, lr: float, gen, log) -> None:
    params = list(model.lm.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    it = tt.batches(stream, seq + 1, bsz, gen)
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = tt.lr_at(step, steps, lr, warm=20)
        x = next(it)
        _, logits = model.trunk(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, tt.VOCAB), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"fine-tune step {step:5d} loss {loss.item():.3f} ({time.time() - t0:.0f}s)")


def write_texts(folder: Path, train: list[str], held: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prose-train.txt").write_text("\n\n".join(train), encoding="utf-8")
    (folder / "prose-heldout.txt").write_text("\n\n".join(held), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=REPO / "data" / "tiny-trained")
    ap.add_argument("--out", type=Path, default=REPO / "data" / "tiny-finetuned")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--texts-out", type=Path, help="also write prose-train.txt / prose-heldout.txt here")
    ap.add_argument("--texts-only", action="store_true", help="only write the texts (with --texts-out)")
    args = ap.parse_args(argv)

    train, held = topics()
    if args.texts_out:
        write_texts(args.texts_out, train, held)
        print(f"wrote {args.texts_out}/prose-train.txt and prose-heldout.txt", flush=True)
    if args.texts_only:
        return 0

    from tokenizers import Tokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    log = lambda s: print(s, flush=True)  # noqa: E731
    tok = Tokenizer.from_file(str(args.src / "tokenizer.json"))
    train_stream = tt.token_stream(tok, train)
    held_stream = tt.token_stream(tok, held)[:8192]
    log(f"prose: {len(train)} train topics ({train_stream.numel()} tokens), {len(held)} held out")

    model = tt.load_trained(args.src)
    before = tt.agreement(model, held_stream)
    log("before: head acceptance on held-out prose " + ", ".join(f"{a:.3f}" for a in before["accept"]))
    model.train()
    finetune_trunk(model, train_stream, args.steps, args.seq, args.batch, args.lr, gen, log)
    model.eval()
    tt.round_to_bf16(model)
    after = tt.agreement(model, held_stream)
    log(
        "after:  original head acceptance on held-out prose " + ", ".join(f"{a:.3f}" for a in after["accept"])
    )
    stats = {
        "from": "data/tiny-trained (trunk fine-tuned, mtp.* head untouched)",
        "text": "pydoc_data.topics, crc32(name) % 10 != 0 (held out: == 0)",
        "steps": args.steps,
        "lr": args.lr,
        "seq": args.seq,
        "batch": args.batch,
        "metric": "held-out topics, first 8192 tokens, chunks of 256; teacher-forced acceptance as in train_tiny.py",
        "original_head_before_finetune": before["accept"],
        "original_head_after_finetune": after["accept"],
        "trunk_top1_vs_text_after": after["trunk_top1_vs_text"],
    }
    tt.save_checkpoint(model, tok, args.out, args.seed, stats)
    text = "\n\n".join(held)
    (args.out / "heldout.txt").write_text(
        text[: text.rfind("\n", 0, HELD_OUT_CHARS)] + "\n", encoding="utf-8"
    )
    log(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
