"""A small, real byte-level BPE tokenizer in the Qwen3.5 style, trained deterministically.

The merges are learned from a fixed list of Python standard-library sources (read in a fixed
order, a bounded number of bytes) plus a short fixed English passage, so every machine with the
same Python version builds byte-identical files. Pre-tokenizer, normalizer, decoder and the
special tokens (same order as Qwen3.5's) follow Qwen's tokenizer.json.
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

N_REGULAR = 1000  # regular (merged + byte) tokens; specials come after, like Qwen's
CORPUS_BYTES = 300_000

# Qwen3.5's pre-tokenizer regex (tokenizer.json / llama.cpp's "qwen35" pre-type).
QWEN35_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# (content, special) in Qwen3.5's id order, starting right after the regular vocabulary.
SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)

STDLIB_FILES: tuple[str, ...] = (
    "this.py",
    "textwrap.py",
    "string.py",
    "colorsys.py",
    "bisect.py",
    "heapq.py",
    "fnmatch.py",
    "shlex.py",
    "json/__init__.py",
    "json/decoder.py",
    "json/encoder.py",
    "functools.py",
    "random.py",
    "calendar.py",
    "difflib.py",
    "argparse.py",
    "pprint.py",
    "statistics.py",
)

ENGLISH_PASSAGE = """\
The quick brown fox jumps over the lazy dog. A model reads a question, thinks about it step by
step, and then answers. When it needs a tool, it calls the tool and waits for the result.
User: What is the weather in Paris today? Assistant: Let me check the weather for you.
The answer is 42. Two plus two is four. Ten times three is thirty. Hello, how are you?
I am fine, thank you. Please write a short poem about the sea, the sky and the mountains.
"""

CHAT_TEMPLATE = """\
{%- set enable_thinking = enable_thinking if enable_thinking is defined else true -%}
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages and messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
{{- '# Tools\\n\\nYou have access to the following functions:\\n\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}
{{- '\\n</tools>\\n\\nTo call a function, reply in this format:\\n\\n<tool_call>\\n<function=name>\\n<parameter=arg>\\nvalue\\n</parameter>\\n</function>\\n</tool_call><|im_end|>\\n' }}
{%- elif messages and messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(last_user=-1) %}
{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}
{%- for m in messages %}
{%- if m.role == 'user' %}
{{- '<|im_start|>user\\n' + m.content + '<|im_end|>\\n' }}
{%- elif m.role == 'assistant' %}
{%- set content = m.content if m.content is string else '' %}
{%- set reasoning = m.reasoning_content if m.reasoning_content is string else '' %}
{%- if not reasoning and '</think>' in content %}
{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') %}
{%- set content = content.split('</think>')[-1].lstrip('\\n') %}
{%- endif %}
{{- '<|im_start|>assistant\\n' }}
{%- if loop.index0 > ns.last_user %}{{- '<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' }}{%- endif %}
{{- content.lstrip('\\n') }}
{%- for call in (m.tool_calls or []) %}
{%- set fn = call.function if call.function is defined else call %}
{%- if loop.first and content %}{{- '\\n\\n' }}{%- elif not loop.first %}{{- '\\n' }}{%- endif %}
{{- '<tool_call>\\n<function=' + fn.name + '>\\n' }}
{%- set args = fn.arguments if fn.arguments is mapping else {} %}
{%- for k, v in args.items() %}
{{- '<parameter=' + k + '>\\n' + (v if v is string else (v | tojson)) + '\\n</parameter>\\n' }}
{%- endfor %}
{{- '</function>\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif m.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' + m.content + '\\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- if enable_thinking %}{{- '<think>\\n' }}{%- else %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}
{%- endif %}
"""


def training_corpus(max_bytes: int = CORPUS_BYTES) -> str:
    """The fixed training text: the English passage, then stdlib sources in a fixed order, capped."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts = [ENGLISH_PASSAGE * 20]
    for rel in STDLIB_FILES:
        path = stdlib / rel
        if path.is_file():
            parts.append(path.read_text(encoding="utf-8", errors="replace"))
    text = "\n".join(parts)
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def special_token_ids(n_regular: int = N_REGULAR) -> dict[str, int]:
    return {tok: n_regular + i for i, (tok, _) in enumerate(SPECIAL_TOKENS)}


def build_tokenizer_object(n_regular: int = N_REGULAR):
    """Train the BPE and return a `tokenizers.Tokenizer` (specials appended after the vocabulary)."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN35_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=n_regular,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator([training_corpus()], trainer=trainer, length=1)
    tok.add_special_tokens([AddedToken(t, special=s, normalized=False) for t, s in SPECIAL_TOKENS])
    return tok


def tokenizer_config(n_regular: int = N_REGULAR, model_max_length: int = 262144) -> dict:
    ids = special_token_ids(n_regular)
    added = {
        str(ids[t]): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": s,
        }
        for t, s in SPECIAL_TOKENS
    }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def build_tokenizer(out_dir: str | Path, n_regular: int = N_REGULAR) -> int:
    """Write tokenizer.json and tokenizer_config.json into out_dir; return the tokenizer's size."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer_object(n_regular)
    # Tokenizer.to_str is stable for a given model; pretty JSON with sorted-free native order.
    data = json.loads(tok.to_str())
    (out / "tokenizer.json").write_text(
        json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    (out / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(n_regular), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    return tok.get_vocab_size(with_added_tokens=True)
