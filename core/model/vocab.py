"""A byte-level BPE tokenizer (tokenizer.json + tokenizer_config.json) as GGUF tokenizer metadata.

No transformers: the files are read directly, following what llama.cpp's converter derives from
them (token list and types, merges, special token ids, add_bos/add_eos, chat template).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGUFValueType

from qwythos.core.errors import QwythosError
from qwythos.core.gguf.file import KV

# GGUF token types (llama.cpp's llama_token_type)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

# special token kinds llama.cpp looks up, in its order, and the GGUF key of each id
SPECIAL_KINDS = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
SPECIAL_ID_KEYS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "sep": "tokenizer.ggml.seperator_token_id",  # sic: llama.cpp's spelling
    "pad": "tokenizer.ggml.padding_token_id",
    "mask": "tokenizer.ggml.mask_token_id",
    # "cls" has no GGUF key: llama.cpp skips it
}
ADD_FLAG_KEYS = {
    "bos": "tokenizer.ggml.add_bos_token",
    "eos": "tokenizer.ggml.add_eos_token",
    "sep": "tokenizer.ggml.add_sep_token",
}
PRE_TOKENIZER = {"qwen35": "qwen35"}  # arch -> tokenizer.ggml.pre
SPIECE_UNDERLINE = "\u2581"


@dataclass
class Vocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int] = field(default_factory=dict)
    add_flags: dict[str, bool] = field(default_factory=dict)
    chat_template: str | list[dict[str, str]] | None = None
    normalizer_lowercase: bool | None = None

    def kv(self, pre: str) -> list[KV]:
        S, A = GGUFValueType.STRING, GGUFValueType.ARRAY
        out = [
            KV("tokenizer.ggml.model", S, "gpt2"),
            KV("tokenizer.ggml.pre", S, pre),
            KV("tokenizer.ggml.tokens", A, self.tokens, S),
            KV("tokenizer.ggml.token_type", A, self.token_types, GGUFValueType.INT32),
        ]
        if self.merges:
            out.append(KV("tokenizer.ggml.merges", A, self.merges, S))
        for kind, tid in self.special_ids.items():
            if kind in SPECIAL_ID_KEYS:
                out.append(KV(SPECIAL_ID_KEYS[kind], GGUFValueType.UINT32, tid))
        for kind, flag in self.add_flags.items():
            if kind in ADD_FLAG_KEYS:
                out.append(KV(ADD_FLAG_KEYS[kind], GGUFValueType.BOOL, flag))
        out += _chat_template_kv(self.chat_template)
        if self.normalizer_lowercase is not None:
            out.append(
                KV("tokenizer.ggml.normalizer.lowercase", GGUFValueType.BOOL, self.normalizer_lowercase)
            )
        return out


def _chat_template_kv(tpl: str | list[dict[str, str]] | None) -> list[KV]:
    S = GGUFValueType.STRING
    if tpl is None:
        return []
    if isinstance(tpl, str):
        return [KV("tokenizer.chat_template", S, tpl)] if tpl else []
    out: list[KV] = []
    names: list[str] = []
    default = None
    for choice in tpl:
        name = "".join(c if c.isascii() and c.isalnum() else "_" for c in choice.get("name", ""))
        template = choice.get("template")
        if name and template is not None:
            if name == "default":
                default = template
            else:
                names.append(name)
                out.append(KV(f"tokenizer.chat_template.{name}", S, template))
    if names:
        out.append(KV("tokenizer.chat_templates", GGUFValueType.ARRAY, names, S))
    if default:
        out.append(KV("tokenizer.chat_template", S, default))
    return out


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise QwythosError(
            f"{path} is not valid JSON ({e.msg}, line {e.lineno})", "re-download the tokenizer files"
        ) from e


def _looks_special(text: str) -> bool:
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


def _merges(model: dict[str, Any], path: Path) -> list[str]:
    merges = model.get("merges") or []
    if not merges:
        return []
    if isinstance(merges[0], str):
        return list(merges)
    if isinstance(merges[0], list) and len(merges[0]) == 2:
        # pairs: spaces inside a part are stored as U+0120 + ... (space shifted by 256), as llama.cpp does
        return [
            " ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair)
            for pair in merges
        ]
    raise QwythosError(f"{path}: unknown merges format", "use a tokenizer.json written by `tokenizers`")


def _lowercase_flag(normalizer: dict[str, Any] | None) -> bool | None:
    if not normalizer:
        return None
    kind = normalizer.get("type")
    if kind == "Lowercase":
        return True
    if kind == "BertNormalizer":
        return normalizer.get("lowercase")
    if kind == "Sequence":
        flags = [_lowercase_flag(n) for n in normalizer.get("normalizers", [])]
        return next((f for f in reversed(flags) if f is not None), None)
    return None


def load_vocab(folder: Path, config: dict[str, Any]) -> Vocab:
    """Tokenizer metadata from `folder` (tokenizer.json, tokenizer_config.json, config.json)."""
    tj_path = folder / "tokenizer.json"
    if not tj_path.is_file():
        raise QwythosError(f"{folder} has no tokenizer.json", "download the model's tokenizer files too")
    tj = _read_json(tj_path)
    model = tj.get("model") or {}
    if model.get("type") not in (None, "BPE"):
        raise QwythosError(
            f"{tj_path}: tokenizer type {model.get('type')} is not BPE",
            "a Qwen3.5 tokenizer.json is expected",
        )
    tc_path = folder / "tokenizer_config.json"
    tc: dict[str, Any] = _read_json(tc_path) if tc_path.is_file() else {}

    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = list(tj.get("added_tokens") or [])
    added_by_id = {int(a["id"]): a for a in added}
    for a in added:
        vocab[a["content"]] = int(a["id"])
    text_cfg = config.get("text_config") or {}
    vocab_size = int(text_cfg.get("vocab_size", config.get("vocab_size", len(vocab))))
    if vocab and max(vocab.values()) >= vocab_size:
        raise QwythosError(
            f"{tj_path} has token id {max(vocab.values())} but config.json's vocab_size is {vocab_size}",
            "use the tokenizer that belongs to this checkpoint",
        )
    # transformers (whose view llama.cpp's converter takes) lets tokenizer_config.json's
    # added_tokens_decoder decide which added tokens are special; tokenizer.json's flag is the fallback
    special_flag = {int(i): bool(a.get("special")) for i, a in (tc.get("added_tokens_decoder") or {}).items()}
    reverse = {i: t for t, i in vocab.items()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        tok = reverse.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added_by_id:
            if special_flag.get(i, bool(added_by_id[i].get("special"))) or _looks_special(tok):
                types.append(CONTROL)
            else:
                tok = tok.replace(SPIECE_UNDERLINE, " ")
                types.append(USER_DEFINED)
            tokens.append(tok)
        else:
            tokens.append(tok)
            types.append(NORMAL)

    v = Vocab(tokens=tokens, token_types=types, merges=_merges(model, tj_path))
    v.normalizer_lowercase = _lowercase_flag(tj.get("normalizer"))
    _post_processor_flags(tj.get("post_processor"), v)
    if tc:
        _config_specials(folder, tc, added, v)
    for kind in SPECIAL_KINDS:  # config.json ids fill what the tokenizer files left unset
        tid = config.get(f"{kind}_token_id")
        if tid is None:
            tid = text_cfg.get(f"{kind}_token_id")
        if isinstance(tid, int) and not isinstance(tid, bool) and tid >= 0 and kind not in v.special_ids:
            v.special_ids[kind] = tid
    return v


def _post_processor_flags(pp: dict[str, Any] | None, v: Vocab) -> None:
    if not pp:
        return
    for proc in pp.get("processors", [pp]):
        kind = proc.get("type")
        if kind == "ByteLevel":
            v.add_flags.setdefault("bos", False)
            v.add_flags.setdefault("eos", False)
        elif kind == "RobertaProcessing":
            v.add_flags.update(bos=True, eos=True, sep=True)
        elif kind == "TemplateProcessing":
            single = proc.get("single", [])
            if len(single) > 1:
                if single[0].get("SpecialToken"):
                    v.add_flags["bos"] = True
                if single[-1].get("SpecialToken"):
                    v.add_flags["eos"] = True


def _config_specials(folder: Path, tc: dict[str, Any], added: list[dict[str, Any]], v: Vocab) -> None:
    tpl: Any = None
    if (folder / "chat_template.jinja").is_file():
        tpl = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    elif (folder / "chat_template.json").is_file():
        tpl = _read_json(folder / "chat_template.json").get("chat_template")
    tpl = tc.get("chat_template", tpl)
    if tpl is None or isinstance(tpl, (str, list)):
        v.chat_template = tpl
    for kind in SPECIAL_KINDS:
        flag = tc.get(f"add_{kind}_token")
        if isinstance(flag, bool) and kind not in v.add_flags:
            v.add_flags[kind] = flag
        entry = tc.get(f"{kind}_token")
        content = entry.get("content") if isinstance(entry, dict) else entry
        if not isinstance(content, str):
            continue
        tid = next((int(a["id"]) for a in added if a.get("content") == content), None)
        if tid is not None and kind not in v.special_ids:
            v.special_ids[kind] = tid


def special_texts(kv: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(control, user-defined) token texts of a GGUF header's vocabulary: the texts a chat
    template's user, tool and file strings must not turn into tokens (<|im_end|>; <think>, ...)."""
    tokens, types = kv.get("tokenizer.ggml.tokens") or [], kv.get("tokenizer.ggml.token_type") or []
    control = tuple(
        t for t, k in zip(tokens, types, strict=False) if k == CONTROL and isinstance(t, str) and t
    )
    markup = tuple(
        t for t, k in zip(tokens, types, strict=False) if k == USER_DEFINED and isinstance(t, str) and t
    )
    return control, markup
