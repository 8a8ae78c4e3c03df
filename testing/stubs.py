"""Metadata-only GGUFs shaped like Qwythos files, for export tests (no weights to load)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from qwythos.core.model.release import MODEL_CONTEXT


def write_stub_gguf(
    path: Path,
    *,
    arch: str = "qwen35",
    nextn_layers: int = 1,
    block_count: int = 33,
    context_length: int = MODEL_CONTEXT,
    file_type: gguf.LlamaFileType | None = gguf.LlamaFileType.MOSTLY_Q4_K_M,
    chat_template: str | None = "{% if enable_thinking is defined %}{% endif %}<|im_start|>",
    tokens: list[str] | None = None,
    eos_token: str = "<|im_end|>",
) -> Path:
    """A metadata-only GGUF (a few tiny tensors) shaped like a Qwythos file: for tests and demos.

    `nextn_layers` > 0 adds `<arch>.nextn_predict_layers` and a `blk.{n-1}.nextn.eh_proj` tensor.
    """
    path = Path(path)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("Qwythos-9B-Claude-Mythos-5-1M")
    w.add_block_count(block_count)
    w.add_context_length(context_length)
    if file_type is not None:
        w.add_file_type(int(file_type))
    if nextn_layers:
        w.add_nextn_predict_layers(nextn_layers)
    vocab = tokens if tokens is not None else ["a", "b", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(vocab)
    if eos_token in vocab:
        w.add_eos_token_id(vocab.index(eos_token))
    if chat_template is not None:
        w.add_chat_template(chat_template)
    w.add_tensor("token_embd.weight", np.zeros((len(vocab), 4), dtype=np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones((4,), dtype=np.float32))
    if nextn_layers:
        w.add_tensor(f"blk.{block_count - 1}.nextn.eh_proj.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
