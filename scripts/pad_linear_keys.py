"""Widen a tiny model's linear-attention key heads with zeros, to the value heads' width.

llama.cpp's qwen35 loader takes both linear-attention head widths from `ssm.state_size`, so a model
whose key heads are narrower than its value heads does not load (an earlier data/tiny-wide had key
heads of 32 and value heads of 64; today's is trained with both 64). This rewrites such a model with
key heads as wide as its value heads, the extra query and key channels of each head zero (their rows
of in_proj_qkv and conv1d). The model computes the
same function: zero channels add nothing to q.k, nor to the L2 norms of q and k, nor to the
delta-rule state; the only change, the query scale 1/sqrt(d_k), multiplies each head's output by
a constant that the gated RMS norm after it removes. The script checks that in torch (logits and
the head's drafts of both folders on held-out text) before it writes.

    nice -n 10 python scripts/pad_linear_keys.py MODEL_FOLDER --out /tmp/model-padded
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch


def pad_rows(w: torch.Tensor, n_heads: int, old: int, new: int) -> torch.Tensor:
    """Rows grouped as n_heads x old -> n_heads x new, the added rows zero."""
    rest = w.shape[1:]
    w = w.reshape(n_heads, old, *rest)
    out = torch.zeros((n_heads, new, *rest), dtype=w.dtype)
    out[:, :old] = w
    return out.reshape(n_heads * new, *rest)


def pad_folder(src: Path, out: Path) -> dict:
    from safetensors.torch import load_file, save_file

    config = json.loads((src / "config.json").read_text())
    text = config["text_config"]
    nk, dk, dv = text["linear_num_key_heads"], text["linear_key_head_dim"], text["linear_value_head_dim"]
    if dk >= dv:
        raise SystemExit(f"{src}: key heads ({dk}) are not narrower than value heads ({dv})")
    sd: dict[str, torch.Tensor] = {}
    for f in sorted(src.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    key_dim = nk * dk
    for name in list(sd):
        if name.endswith("linear_attn.in_proj_qkv.weight") or name.endswith("linear_attn.conv1d.weight"):
            w = sd[name]
            q, k, v = w[:key_dim], w[key_dim : 2 * key_dim], w[2 * key_dim :]
            sd[name] = torch.cat([pad_rows(q, nk, dk, dv), pad_rows(k, nk, dk, dv), v]).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.suffix != ".safetensors" and p.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy2(p, out / p.name)
    text["linear_key_head_dim"] = dv
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    return {"linear_key_head_dim": [dk, dv]}


def check_same(a: Path, b: Path) -> float:
    """Largest difference of the trunk's logits and the head's draft logits, on held-out text."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_tiny import build_tokenizer, corpus_files, load_trained, read_texts

    tok = build_tokenizer()
    _, held = corpus_files()
    ids = torch.tensor([tok.encode(read_texts(held[:1])[0]).ids[:256]])
    worst = 0.0
    with torch.no_grad():
        ma, mb = load_trained(a), load_trained(b)
        ha, la = ma.trunk(ids)
        hb, lb = mb.trunk(ids)
        worst = max(worst, float((la - lb).abs().max()))
        _, da = ma.mtp_step(ha[:, :-1], ids[:, 1:])
        _, db = mb.mtp_step(hb[:, :-1], ids[:, 1:])
        worst = max(worst, float((da - db).abs().max()))
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    info = pad_folder(args.src, args.out)
    diff = check_same(args.src, args.out)
    print(
        f"{args.out}: key heads {info['linear_key_head_dim'][0]} -> {info['linear_key_head_dim'][1]}; "
        f"largest logit difference {diff:.2e}"
    )
    if diff > 1e-3:
        print("not the same function: do not use it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
