"""Train a tiny Qwen3.5-architecture model with a working MTP head, on CPU, in minutes.

The trunk is transformers' own Qwen3.5 text model (hybrid gated-DeltaNet / full attention); the
MTP head implements llama.cpp's qwen35 MTP forward exactly:

    h_t   = trunk hidden after the final output norm
    x     = fc(concat(enorm(embed(x_{t+1})), hnorm(h_t)))     (embedding half first)
    x     = one full-attention decoder block (gated Q, partial rotary), MTP position t+1
    g_t   = shared_head_norm(x)            (fed back as h when drafts are chained)
    draft = lm_head(g_t)                   (predicts x_{t+2})

Corpus: the Python standard library's top-level source files (every machine has them), a
deterministic split by file name (crc32 % 10 == 0 is held out). The tokenizer is a byte-level
BPE trained on the same files, with Qwen's special tokens and Qwen3.5's pre-tokenizer regex.

The model is saved in the real HF layout of Qwen3_5ForConditionalGeneration
(model.language_model.*, lm_head.weight, mtp.*), in bf16, next to its tokenizer files.

    nice -n 5 python scripts/train_tiny.py --out data/tiny-trained --seed 0
    nice -n 10 python scripts/train_tiny.py --shape wide --out data/tiny-wide --seed 0

`--shape wide` trains the same architecture at hidden 256 (every matrix row a multiple of 256, so
llama.cpp's k-quants and IQ4_XS apply instead of falling back to other types), for measuring
quantization quality (quants with and without an importance matrix).
"""

from __future__ import annotations

import argparse
import json
import math
import sysconfig
import time
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from qwythos.testing.tiny import TINY_TEXT_CONFIG

# the fixture builder's tokenizer (1000 merges + Qwen3.5's specials), padded like Qwen's vocabulary
VOCAB = 1152

# the fixture builder's text config, made smaller (trains in minutes) and with plain rope
TEXT_CONFIG = {k: v for k, v in TINY_TEXT_CONFIG.items() if k != "mamba_ssm_dtype"} | {
    "eos_token_id": 0,  # set to <|im_end|> when the config is written
    "head_dim": 32,
    "hidden_size": 128,
    "intermediate_size": 384,
    "max_position_embeddings": 4096,
    "rope_parameters": {
        "mrope_interleaved": True,
        "mrope_section": [2, 1, 1],
        "partial_rotary_factor": 0.25,
        "rope_theta": 10000000,
        "rope_type": "default",
    },
    "vocab_size": VOCAB,
}

#: Shapes on top of TEXT_CONFIG. "wide": hidden 256 and every matrix's input width (hidden, the
#: 4 x 64 attention output, the 4 x 64 linear-attention value width, the FFN's 512) a multiple of
#: 256, the k-quant block, so Q4_K_M / Q3_K_M / Q2_K / IQ4_XS quantize every matrix as named.
SHAPES: dict[str, dict] = {
    "tiny": {},
    "wide": {
        "hidden_size": 256,
        "intermediate_size": 512,
        "head_dim": 64,
        # llama.cpp's qwen35 loader takes both linear-attention head widths from ssm.state_size:
        # key and value heads must be equally wide for the file to load
        "linear_key_head_dim": 64,
        "linear_value_head_dim": 64,
        "rope_parameters": {**TEXT_CONFIG["rope_parameters"], "mrope_section": [3, 3, 2]},
    },
}


# ---------------------------------------------------------------- corpus and tokenizer


def corpus_files() -> tuple[list[Path], list[Path]]:
    """(train, held-out) stdlib source files, chosen by name so the split is stable."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in lib.glob("*.py") if 2_000 < p.stat().st_size < 200_000)
    held = [p for p in files if zlib.crc32(p.name.encode()) % 10 == 0]
    train = [p for p in files if zlib.crc32(p.name.encode()) % 10 != 0]
    return train, held


def read_texts(files: list[Path]) -> list[str]:
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


def build_tokenizer():
    from qwythos.testing.tokenizer_build import build_tokenizer_object

    return build_tokenizer_object()


def save_tokenizer(out: Path) -> None:
    from qwythos.testing.tokenizer_build import build_tokenizer

    build_tokenizer(out)


# ---------------------------------------------------------------- model


def text_dict(tok, shape: str = "tiny") -> dict:
    """The text config (as written to config.json) of a shape."""
    return TEXT_CONFIG | SHAPES[shape] | {"eos_token_id": tok.token_to_id("<|im_end|>")}


def text_config(tok, shape: str = "tiny"):
    return config_from_dict(text_dict(tok, shape))


def config_from_dict(d: dict):
    from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5TextConfig

    d = {k: v for k, v in d.items() if k != "model_type"}
    cfg = Qwen3_5TextConfig(**d)
    cfg._attn_implementation = "sdpa"
    cfg.qwythos_text_dict = d  # written back to config.json by save_checkpoint
    return cfg


class MTPHead(nn.Module):
    """llama.cpp's qwen35 MTP block, with the HF names of the `mtp.*` tensors."""

    def __init__(self, cfg):
        super().__init__()
        from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5TextConfig
        from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5DecoderLayer, Qwen3_5RMSNorm

        h = cfg.hidden_size
        n = cfg.num_hidden_layers
        block_cfg = Qwen3_5TextConfig(**{**cfg.to_dict(), "layer_types": ["full_attention"] * n})
        block_cfg._attn_implementation = "sdpa"
        self.fc = nn.Linear(2 * h, h, bias=False)
        self.pre_fc_norm_embedding = Qwen3_5RMSNorm(h, eps=cfg.rms_norm_eps)
        self.pre_fc_norm_hidden = Qwen3_5RMSNorm(h, eps=cfg.rms_norm_eps)
        self.layers = nn.ModuleList([Qwen3_5DecoderLayer(block_cfg, 0)])
        self.norm = Qwen3_5RMSNorm(h, eps=cfg.rms_norm_eps)

    def forward(self, h, next_embeds, position_embeddings):
        """h: (B,T,H) post-norm hidden of positions t; next_embeds: embed(x_{t+1}). Returns g_t."""
        x = self.fc(torch.cat([self.pre_fc_norm_embedding(next_embeds), self.pre_fc_norm_hidden(h)], -1))
        x = self.layers[0](x, position_embeddings=position_embeddings, attention_mask=None)
        return self.norm(x)


class TinyQwen35(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5ForCausalLM

        self.text_dict = {"model_type": TEXT_CONFIG["model_type"], **cfg.qwythos_text_dict}
        self.lm = Qwen3_5ForCausalLM(cfg)
        self.mtp = MTPHead(cfg)
        # Qwen3.5 norms store w with output = x * (1 + w): start at 0 like the HF init
        for mod in self.mtp.modules():
            if type(mod).__name__ == "Qwen3_5RMSNorm":
                nn.init.zeros_(mod.weight)
        for lin in (self.mtp.fc,):
            nn.init.normal_(lin.weight, std=cfg.initializer_range)

    def trunk(self, ids):
        """Post-norm hidden states (B,T,H) and logits."""
        h = self.lm.model(input_ids=ids).last_hidden_state
        return h, self.lm.lm_head(h)

    def mtp_step(self, h, next_ids_or_embeds, start_pos: int = 1):
        """One chained MTP step over a whole sequence; MTP position of pair (h_t, x_{t+1}) is t+1."""
        emb = (
            self.lm.model.embed_tokens(next_ids_or_embeds)
            if next_ids_or_embeds.dtype == torch.long
            else next_ids_or_embeds
        )
        b, t, _ = emb.shape
        pos = torch.arange(start_pos, start_pos + t).unsqueeze(0).expand(b, -1)
        pe = self.lm.model.rotary_emb(emb, pos)
        g = self.mtp(h, emb, pe)
        return g, self.lm.lm_head(g)


# ---------------------------------------------------------------- data


def token_stream(tok, texts: list[str]) -> torch.Tensor:
    eot = tok.token_to_id("<|endoftext|>")
    ids: list[int] = []
    for t in texts:
        ids += tok.encode(t).ids + [eot]
    return torch.tensor(ids, dtype=torch.long)


def batches(stream: torch.Tensor, seq: int, bsz: int, gen: torch.Generator):
    n = stream.numel() - seq - 1
    while True:
        starts = torch.randint(0, n, (bsz,), generator=gen)
        yield torch.stack([stream[s : s + seq] for s in starts])


# ---------------------------------------------------------------- training


def lr_at(step: int, total: int, peak: float, warm: int = 50) -> float:
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm))) * 0.9 + peak * 0.1


def train_trunk(model, stream, steps, seq, bsz, gen, log):
    params = list(model.lm.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.01, betas=(0.9, 0.95))
    it = batches(stream, seq + 1, bsz, gen)
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, 3e-3)
        x = next(it)
        _, logits = model.trunk(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"trunk step {step:5d} loss {loss.item():.3f} ({time.time() - t0:.0f}s)")


def head_losses(model, x):
    """Depth-1 (and chained depth-2) losses: KL to the trunk's own next-token distribution + CE."""
    with torch.no_grad():
        h, logits = model.trunk(x)
    # depth 1: pair (h_t, x_{t+1}) predicts the trunk's token at t+2 = argmax logits[t+1]
    g1, l1 = model.mtp_step(h[:, :-2], x[:, 1:-1])
    tgt1 = logits[:, 1:-1]
    loss1 = F.kl_div(F.log_softmax(l1, -1), F.log_softmax(tgt1, -1), log_target=True, reduction="batchmean")
    loss1 = loss1 / l1.shape[1] + F.cross_entropy(l1.reshape(-1, VOCAB), x[:, 2:].reshape(-1))
    # depth 2, teacher-forced chain: (g1_t, x_{t+2}) predicts the trunk's token at t+3
    _, l2 = model.mtp_step(g1[:, :-1], x[:, 2:-1], start_pos=2)
    tgt2 = logits[:, 2:-1]
    loss2 = F.kl_div(F.log_softmax(l2, -1), F.log_softmax(tgt2, -1), log_target=True, reduction="batchmean")
    loss2 = loss2 / l2.shape[1]
    return loss1, loss2


def train_head(model, stream, steps, seq, bsz, gen, log):
    params = list(model.mtp.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.01, betas=(0.9, 0.95))
    it = batches(stream, seq, bsz, gen)
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, 3e-3)
        loss1, loss2 = head_losses(model, next(it))
        loss = loss1 + 0.5 * loss2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(
                f"head  step {step:5d} loss d1 {loss1.item():.3f} d2 {loss2.item():.3f} "
                f"({time.time() - t0:.0f}s)"
            )


@torch.no_grad()
def agreement(model, stream: torch.Tensor, seq: int = 256, depth: int = 3) -> dict:
    """Teacher-forced chained drafts vs the trunk's greedy tokens on held-out text.

    Depth k at position t drafts x_{t+k+1} from h_t, x_{t+1} and the head's own drafts; it counts
    only where depths 1..k-1 were accepted (as a speculative decoder would).
    """
    n = (stream.numel() - 1) // seq
    acc = [0] * depth
    tot = [0] * depth
    trunk_top1 = 0
    trunk_n = 0
    for i in range(n):
        x = stream[i * seq : (i + 1) * seq].unsqueeze(0)
        h, logits = model.trunk(x)
        greedy = logits.argmax(-1)  # greedy[t] = trunk's choice for x_{t+1}
        trunk_top1 += (greedy[0, :-1] == x[0, 1:]).sum().item()
        trunk_n += seq - 1
        t_len = seq - depth - 1
        # teacher-forced: the head sees the text's x_{t+1}, the trunk's greedy tokens are the truth
        g, lg = model.mtp_step(h[:, :t_len], x[:, 1 : 1 + t_len])
        alive = torch.ones(t_len, dtype=torch.bool)
        for k in range(depth):
            draft = lg.argmax(-1)[0]
            truth = greedy[0, k + 1 : k + 1 + t_len]
            ok = draft == truth
            tot[k] += alive.sum().item()
            acc[k] += (ok & alive).sum().item()
            alive &= ok
            g, lg = model.mtp_step(g, draft.unsqueeze(0), start_pos=k + 2)
    return {
        "trunk_top1_vs_text": trunk_top1 / max(1, trunk_n),
        "accept": [a / max(1, t) for a, t in zip(acc, tot, strict=True)],
        "counts": list(zip(acc, tot, strict=True)),
    }


# ---------------------------------------------------------------- saving


def hf_state_dict(model) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in model.lm.state_dict().items():
        name = k.replace("model.", "model.language_model.", 1) if k.startswith("model.") else k
        out[name] = v
    for k, v in model.mtp.state_dict().items():
        out[f"mtp.{k}"] = v
    return {k: v.detach().to(torch.bfloat16).contiguous() for k, v in sorted(out.items())}


def save_checkpoint(model, tok, out: Path, seed: int, stats: dict) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    sd = hf_state_dict(model)
    trunk = {k: v for k, v in sd.items() if not k.startswith("mtp.")}
    head = {k: v for k, v in sd.items() if k.startswith("mtp.")}
    shards = {"model-00001-of-00002.safetensors": trunk, "model-00002-of-00002.safetensors": head}
    weight_map = {}
    total = 0
    for fname, part in shards.items():
        save_file(part, str(out / fname), metadata={"format": "pt"})
        for k, v in part.items():
            weight_map[k] = fname
            total += v.numel() * v.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    tc = dict(model.text_dict)
    from qwythos.testing.tiny import TINY_VISION_CONFIG, generation_config
    from qwythos.testing.tokenizer_build import special_token_ids

    sp = special_token_ids()
    vision = {**TINY_VISION_CONFIG, "out_hidden_size": tc["hidden_size"]}
    config = {
        "architectures": ["Qwen3_5ForConditionalGeneration"],
        "image_token_id": sp["<|image_pad|>"],
        "model_type": "qwen3_5",
        "text_config": tc,
        "tie_word_embeddings": False,
        "transformers_version": "5.23.0",
        "video_token_id": sp["<|video_pad|>"],
        "vision_config": vision,  # config only: this text model ships no vision tower
        "vision_end_token_id": sp["<|vision_end|>"],
        "vision_start_token_id": sp["<|vision_start|>"],
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(generation_config(sp), indent=2) + "\n")
    save_tokenizer(out)
    (out / "TRAINING.json").write_text(json.dumps({"seed": seed, **stats}, indent=2) + "\n")


def load_trained(folder: Path) -> TinyQwen35:
    """A saved tiny model back in torch (float32), for cross-checks against llama.cpp."""
    from safetensors.torch import load_file

    text = json.loads((Path(folder) / "config.json").read_text())["text_config"]
    model = TinyQwen35(config_from_dict(text))
    sd: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        sd.update(load_file(str(f)))
    lm = {
        k.replace("model.language_model.", "model.", 1): v.float()
        for k, v in sd.items()
        if not k.startswith("mtp.")
    }
    head = {k[4:]: v.float() for k, v in sd.items() if k.startswith("mtp.")}
    model.lm.load_state_dict(lm)
    if head:
        model.mtp.load_state_dict(head)
    return model.eval()


def round_to_bf16(model) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="default: data/tiny-trained (data/tiny-wide)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trunk-steps", type=int, default=1500)
    ap.add_argument("--head-steps", type=int, default=800)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-accept", type=float, default=0.15, help="refuse to save below this depth-1 rate")
    args = ap.parse_args(argv)
    data = Path(__file__).resolve().parents[1] / "data"
    args.out = args.out or data / ("tiny-trained" if args.shape == "tiny" else f"tiny-{args.shape}")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    log = lambda s: print(s, flush=True)  # noqa: E731

    train_files, held_files = corpus_files()
    train_texts, held_texts = read_texts(train_files), read_texts(held_files)
    tok = build_tokenizer()
    train_stream = token_stream(tok, train_texts)
    held_stream = token_stream(tok, held_texts)[:8192]
    log(
        f"corpus: {len(train_files)} train files ({train_stream.numel()} tokens), "
        f"{len(held_files)} held-out ({held_stream.numel()} tokens used)"
    )

    model = TinyQwen35(text_config(tok, args.shape))
    model.train()
    train_trunk(model, train_stream, args.trunk_steps, args.seq, args.batch, gen, log)
    for p in model.lm.parameters():
        p.requires_grad_(False)
    train_head(model, train_stream, args.head_steps, args.seq, args.batch, gen, log)
    model.eval()
    round_to_bf16(model)  # measure what is saved
    stats = agreement(model, held_stream)
    chance = 1.0 / VOCAB
    log(
        f"held-out: trunk top-1 vs text {stats['trunk_top1_vs_text']:.3f}; MTP acceptance vs trunk greedy "
        + ", ".join(f"d{k + 1} {a:.3f}" for k, a in enumerate(stats["accept"]))
        + f" (chance ~{chance:.4f})"
    )
    if stats["accept"][0] < args.min_accept:
        log(f"depth-1 acceptance {stats['accept'][0]:.3f} < {args.min_accept}: not saving")
        return 1
    stats = {"shape": args.shape, "trunk_steps": args.trunk_steps, "head_steps": args.head_steps, **stats}
    save_checkpoint(model, tok, args.out, args.seed, stats)
    log(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
