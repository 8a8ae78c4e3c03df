"""Place a Qwythos GGUF where LM Studio finds it, the way `lms import` does, plus a `model.yaml`.

Layout (`lms import`): `<models-dir>/<publisher>/<model>/<file>.gguf`, models dir by default
`~/.lmstudio/models`. `lms import` moves the file unless told `-c/--copy`, `-L/--hard-link` or
`-l/--symbolic-link`; we default to copying (nothing of the user's disappears) and print the
`lms import` command that does the same.

`model.yaml` (LM Studio's model.yaml draft spec, lmstudio-js VirtualModelDefinition): the card's
sampling as `config.operation.fields`, the context and, for a file with the MTP head, MTP drafting
as `config.load.fields` (`llm.load.llama.speculativeDecoding.draftMtp`), and metadata saying the
model reasons and was trained for tool use. The chat template itself comes from the GGUF.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from qwythos.core.errors import QwythosError
from qwythos.core.fileio import atomic_output, ensure_writable_dir
from qwythos.core.header import read_gguf_summary
from qwythos.core.release import MODEL_CONTEXT, SIZE_LABEL, split_quant_suffix
from qwythos.export import card
from qwythos.export.place import MODES, Placement, place_file

DEFAULT_PUBLISHER = "empero-ai"
DEFAULT_MODELS_DIR = Path("~/.lmstudio/models")
DEFAULT_CONTEXT = 32768
DEFAULT_DRAFT_MAX = 3
#: lms import flag per placement mode (move is its default: no flag).
LMS_FLAGS: dict[str, str] = {"copy": " -c", "hardlink": " -L", "symlink": " -l", "move": ""}


@dataclass
class LMStudioExport:
    gguf: Path
    dest: Path
    model_yaml: Path
    model_key: str
    mode: str
    action: str
    yaml_action: str
    has_mtp: bool
    lms_command: str
    yaml_text: str
    warnings: list[str] = field(default_factory=list)


def model_folder_name(gguf: Path) -> str:
    """`Qwythos-9B-Claude-Mythos-5-1M-Q4_K_M.gguf` -> `Qwythos-9B-Claude-Mythos-5-1M-GGUF`."""
    stem, _ = split_quant_suffix(gguf.stem)
    return f"{stem}-GGUF"


def _yaml(value: object, indent: int = 0) -> list[str]:
    """A small YAML emitter: mappings, sequences, and scalars written as JSON (valid YAML)."""
    pad = "  " * indent
    out: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{k}:")
                out += _yaml(v, indent + 1)
            else:
                out.append(f"{pad}{k}: {json.dumps(v)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                first, *rest = _yaml(item, indent + 1)
                out.append(f"{pad}- {first.lstrip()}")
                out += rest
            else:
                out.append(f"{pad}- {json.dumps(item)}")
    else:
        out.append(f"{pad}{json.dumps(value)}")
    return out


def model_yaml(
    *,
    publisher: str,
    folder: str,
    size_bytes: int,
    has_mtp: bool,
    thinking_switch: bool,
    context: int = DEFAULT_CONTEXT,
    max_context: int = MODEL_CONTEXT,
    draft_max: int = DEFAULT_DRAFT_MAX,
) -> dict:
    """The model.yaml content as a dict (see the module docstring for the keys' origin)."""
    virtual = f"{publisher}/{folder.removesuffix('-GGUF').lower()}"
    doc: dict = {
        "model": virtual,
        "base": [
            {
                "key": f"{publisher}/{folder.lower()}",
                "sources": [{"type": "huggingface", "user": publisher, "repo": folder}],
            }
        ],
        "metadataOverrides": {
            "domain": "llm",
            "architectures": ["qwen35"],
            "compatibilityTypes": ["gguf"],
            "paramsStrings": [SIZE_LABEL],
            "minMemoryUsageBytes": size_bytes,
            "contextLengths": [max_context],
            "vision": False,
            "reasoning": True,
            "trainedForToolUse": True,
        },
        "config": {
            "operation": {
                "fields": [
                    {"key": "llm.prediction.temperature", "value": card.TEMPERATURE},
                    {"key": "llm.prediction.topPSampling", "value": {"checked": True, "value": card.TOP_P}},
                    {"key": "llm.prediction.topKSampling", "value": card.TOP_K},
                    {
                        "key": "llm.prediction.repeatPenalty",
                        "value": {"checked": True, "value": card.REPEAT_PENALTY},
                    },
                ]
            },
            "load": {"fields": [{"key": "llm.load.contextLength", "value": context}]},
        },
    }
    if has_mtp:
        doc["config"]["load"]["fields"] += [
            {"key": "llm.load.llama.speculativeDecoding.draftMtp", "value": True},
            {"key": "llm.load.llama.speculativeDecoding.draftMaxTokens", "value": draft_max},
        ]
    if thinking_switch:
        doc["customFields"] = [
            {
                "key": "enableThinking",
                "displayName": "Enable Thinking",
                "description": "Let the model think in a <think> block before it answers.",
                "type": "boolean",
                "defaultValue": True,
                "effects": [{"type": "setJinjaVariable", "variable": "enable_thinking"}],
            }
        ]
    return doc


def render_model_yaml(doc: dict, file_name: str) -> str:
    header = [
        f"# LM Studio model.yaml for {file_name}",
        "# Generated by `qwythos export lmstudio`: sampling from the model card, MTP drafting when the",
        "# file carries the head. The chat template (thinking, tool calls) comes from the GGUF.",
    ]
    return "\n".join(header + _yaml(doc)) + "\n"


def export_lmstudio(
    gguf: Path,
    *,
    publisher: str = DEFAULT_PUBLISHER,
    models_dir: Path | None = None,
    mode: str = "copy",
    context: int | None = None,
) -> LMStudioExport:
    """Validate, place the GGUF and write model.yaml beside it; never overwrite a different file."""
    gguf = Path(gguf)
    summary = read_gguf_summary(gguf)
    if mode not in MODES:
        raise QwythosError(f"unknown mode {mode!r}", f"use one of {', '.join(MODES)}")
    if not publisher or "/" in publisher or publisher.startswith("."):
        raise QwythosError(f"--publisher {publisher!r} is not a folder name", "use e.g. empero-ai")
    limit = summary.context_length or MODEL_CONTEXT
    context = min(DEFAULT_CONTEXT, limit) if context is None else context
    if not 1 <= context <= limit:
        raise QwythosError(f"context {context} is outside 1..{limit}", f"pick a context up to {limit}")
    root = (models_dir or DEFAULT_MODELS_DIR).expanduser()
    folder = model_folder_name(gguf)
    dest_dir = root / publisher / folder
    dest = dest_dir / gguf.name
    doc = model_yaml(
        publisher=publisher,
        folder=folder,
        size_bytes=summary.size_bytes,
        has_mtp=summary.has_mtp,
        thinking_switch=summary.chat_template_has_enable_thinking,
        context=context,
        max_context=limit,
    )
    text = render_model_yaml(doc, gguf.name)
    yaml_path = dest_dir / "model.yaml"
    # Check both destinations before touching either.
    yaml_same = yaml_path.is_file() and yaml_path.read_bytes() == text.encode()
    if yaml_path.exists() and not yaml_same:
        raise QwythosError(
            f"{yaml_path} already exists with other content",
            "remove it yourself (it may hold your own settings) or pick another --publisher",
        )
    ensure_writable_dir(dest_dir, "LM Studio model folder")
    placed: Placement = place_file(gguf, dest, mode)
    if not yaml_same:
        with atomic_output(yaml_path) as tmp:
            tmp.write_bytes(text.encode())
    lms = f"lms import {gguf} --user-repo {publisher}/{folder} -y{LMS_FLAGS[mode]}"
    return LMStudioExport(
        gguf=gguf,
        dest=dest,
        model_yaml=yaml_path,
        model_key=f"{publisher}/{folder}",
        mode=mode,
        action=placed.action,
        yaml_action="unchanged" if yaml_same else "written",
        has_mtp=summary.has_mtp,
        lms_command=lms,
        yaml_text=text,
        warnings=list(summary.warnings),
    )
