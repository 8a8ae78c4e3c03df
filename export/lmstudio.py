"""Put a Qwythos GGUF where LM Studio finds it (as `lms import` does) and its model definition
(`model.yaml` + `manifest.json`) where LM Studio reads definitions: its local Hub folder.

Read in LM Studio's own sources (lmstudio-ai/lms 0.3.43, lmstudio-ai/lmstudio-js, 2026-08) and
re-stated here:

- LM Studio's home (`findLMStudioHome`): the folder named in `~/.lmstudio-home-pointer`, else
  `~/.cache/lm-studio` when it exists, else `~/.lmstudio`. (We only read the pointer; LM Studio
  writes it.)
- The GGUF: `lms import FILE --user-repo USER/REPO` places it at `<models>/<USER>/<REPO>/<file>`,
  `<models>` being `downloadsFolder` of `<home>/settings.json`, else `<home>/models`. It moves the
  file unless told `-c/--copy`, `-L/--hard-link` or `-l/--symbolic-link`; we copy by default
  (nothing of the user's disappears) and print the `lms import` line that does the same.
- The definition: `model.yaml` is a Hub artifact, never read from beside a GGUF. A local artifact
  lives in `<home>/hub/models/<owner>/<name>/` with a `manifest.json` next to it; `lms push` makes
  that manifest from the model.yaml (`generateManifestJsonFromModelYaml`): type "model", owner and
  name from `model:`, one dependency of type "model" with purpose "baseModel" whose `modelKeys` and
  `sources` are the `base:` entries' keys and sources. Owner must be kebab-case, the name
  kebab-case with dots (`artifactIdentifierRegex`), both lower case.
- model.yaml (`VirtualModelDefinition`): `model`, `base` (concrete models: `key` + Hugging Face
  `sources`), `metadataOverrides`, `config.operation.fields` / `config.load.fields` as `{key, value}`
  (lms-kv-config schema: `llm.prediction.temperature` numeric, `topKSampling` numeric,
  `topPSampling` / `minPSampling` / `repeatPenalty` checkbox-numeric `{checked, value}`,
  `llm.load.contextLength`, `llm.load.llama.speculativeDecoding.draftMtp` boolean and
  `...draftMaxTokens` integer), `customFields`.
- Sampling is the model card's, min-p included: LM Studio's own default turns min-p on at 0.05.
- `lms load KEY --speculative-draft-mtp --speculative-draft-max-tokens N -c CTX` loads it the same
  way by hand; we print that line, every path and key shell-quoted.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from qwythos.core.errors import QwythosError
from qwythos.core.fileio import atomic_output, ensure_writable_dir
from qwythos.core.gguf.mmproj import choose_mmproj
from qwythos.core.gguf.view import read_view
from qwythos.core.model.release import (
    MIN_P,
    MODEL_CONTEXT,
    PUBLISHER,
    REPEAT_PENALTY,
    SIZE_LABEL,
    START_CONTEXT,
    TEMPERATURE,
    TOP_K,
    TOP_P,
    split_quant_suffix,
)
from qwythos.core.model.summary import exportable
from qwythos.export.place import MODES, Placement, place_file
from qwythos.export.settings import load_settings

#: lms import flag per placement mode (move is its default: no flag).
LMS_FLAGS: dict[str, str] = {"copy": " -c", "hardlink": " -L", "symlink": " -l", "move": ""}
#: lmstudio-js kebab.ts / ArtifactManifestBase.ts: what an owner and a name may be.
OWNER_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
NAME_RE = re.compile(r"^[a-z0-9]+(?:[-.][a-z0-9]+)*$")
NAME_MAX = 100


@dataclass
class LMStudioExport:
    gguf: Path
    dest: Path
    model_yaml: Path
    manifest: Path
    model_key: str  # the definition's `owner/name`, what `lms load` takes
    concrete_key: str  # the imported file's key, the definition's base
    mode: str
    action: str
    yaml_action: str
    has_mtp: bool
    draft: int
    context: int
    lms_command: str  # the `lms import` equivalent of the placement
    load_command: str  # `lms load ...` with the same load settings
    yaml_text: str
    warnings: list[str] = field(default_factory=list)
    mmproj: Path | None = None  # the projector placed beside the model (mmproj-*.gguf)
    mmproj_note: str | None = None  # "vision projector: FILE (how it was chosen)"


def lmstudio_home() -> Path:
    """LM Studio's home folder, found as LM Studio finds it (read only)."""
    home = Path.home()
    pointer = home / ".lmstudio-home-pointer"
    if pointer.is_file():
        text = pointer.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            return Path(text)
    cache = home / ".cache" / "lm-studio"
    return cache if cache.exists() else home / ".lmstudio"


def models_folder(home: Path) -> Path:
    """Where `lms import` puts models: settings.json's downloadsFolder, else `<home>/models`."""
    settings = home / "settings.json"
    try:
        folder = json.loads(settings.read_text(encoding="utf-8")).get("downloadsFolder")
    except (OSError, ValueError, AttributeError):
        folder = None
    return Path(folder) if isinstance(folder, str) and folder else home / "models"


def model_folder_name(gguf: Path) -> str:
    """`Qwythos-9B-Claude-Mythos-5-1M-Q4_K_M.gguf` -> `Qwythos-9B-Claude-Mythos-5-1M-GGUF`
    (the `-MTP` of a restored file is kept: `...-1M-MTP-GGUF`)."""
    stem, _ = split_quant_suffix(gguf.stem)
    return f"{stem}-GGUF"


def artifact_name(folder: str) -> str:
    """The definition's name for a model folder: lower case, kebab, `-gguf` dropped."""
    name = folder.lower().removesuffix("-gguf")
    name = re.sub(r"[^a-z0-9.]+", "-", name)
    name = re.sub(r"([-.])[-.]+", r"\1", name).strip("-.")
    if not NAME_RE.match(name) or len(name) > NAME_MAX:
        raise QwythosError(
            f"cannot make an LM Studio model name from {folder!r}",
            "rename the GGUF to letters, digits and dashes (e.g. Qwythos-9B-Q4_K_M.gguf)",
        )
    return name


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
                out.append(f"{pad}{k}: {json.dumps(v, ensure_ascii=False)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                first, *rest = _yaml(item, indent + 1)
                out.append(f"{pad}- {first.lstrip()}")
                out += rest
            else:
                out.append(f"{pad}- {json.dumps(item, ensure_ascii=False)}")
    else:
        out.append(f"{pad}{json.dumps(value, ensure_ascii=False)}")
    return out


def model_yaml(
    *,
    publisher: str,
    folder: str,
    size_bytes: int,
    draft: int,
    thinking_switch: bool,
    context: int = START_CONTEXT,
    max_context: int = MODEL_CONTEXT,
    vision: bool = False,
) -> dict:
    """The model.yaml content as a dict (see the module docstring for the keys' origin);
    `draft` > 0 turns MTP drafting on with that many tokens."""
    doc: dict = {
        "model": f"{publisher}/{artifact_name(folder)}",
        "base": [
            {
                "key": f"{publisher}/{folder}".lower(),
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
            "vision": vision,
            "reasoning": True,
            "trainedForToolUse": True,
        },
        "config": {
            "operation": {
                "fields": [
                    {"key": "llm.prediction.temperature", "value": TEMPERATURE},
                    {"key": "llm.prediction.topPSampling", "value": {"checked": True, "value": TOP_P}},
                    {"key": "llm.prediction.topKSampling", "value": TOP_K},
                    {"key": "llm.prediction.minPSampling", "value": {"checked": True, "value": MIN_P}},
                    {
                        "key": "llm.prediction.repeatPenalty",
                        "value": {"checked": True, "value": REPEAT_PENALTY},
                    },
                ]
            },
            "load": {"fields": [{"key": "llm.load.contextLength", "value": context}]},
        },
    }
    if draft > 0:
        doc["config"]["load"]["fields"] += [
            {"key": "llm.load.llama.speculativeDecoding.draftMtp", "value": True},
            {"key": "llm.load.llama.speculativeDecoding.draftMaxTokens", "value": draft},
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


def manifest_json(doc: dict) -> str:
    """manifest.json for a model.yaml dict, as `lms push` builds it (JSON.stringify(m, null, 2))."""
    owner, name = doc["model"].split("/")
    base = doc["base"]
    if isinstance(base, str):
        b_owner, b_name = base.split("/")
        deps = [{"type": "artifact", "owner": b_owner, "name": b_name, "purpose": "baseModel"}]
    else:
        deps = [
            {
                "type": "model",
                "modelKeys": [b["key"] for b in base],
                "sources": [s for b in base for s in b["sources"]],
                "purpose": "baseModel",
            }
        ]
    manifest: dict = {"type": "model", "owner": owner, "name": name, "dependencies": deps}
    if doc.get("tags") is not None:
        manifest["tags"] = doc["tags"]
    return json.dumps(manifest, indent=2, ensure_ascii=False)


def render_model_yaml(doc: dict, file_name: str) -> str:
    header = [
        f"# LM Studio model definition for {file_name}",
        "# Generated by `qwythos export lmstudio`: sampling from the model card, MTP drafting when the",
        "# file carries the head. The chat template (thinking, tool calls) comes from the GGUF.",
    ]
    return "\n".join(header + _yaml(doc)) + "\n"


def _quote_cmd(*parts: str) -> str:
    return " ".join(shlex.quote(p) for p in parts)


def export_lmstudio(
    gguf: Path,
    *,
    publisher: str = PUBLISHER,
    home: Path | None = None,
    models_dir: Path | None = None,
    mode: str = "copy",
    context: int | None = None,
    draft: int | None = None,
    mmproj: Path | None = None,
) -> LMStudioExport:
    """Validate, place the GGUF, write model.yaml + manifest.json into LM Studio's Hub folder;
    never overwrite a different file. `context` and `draft` (MTP draft tokens, 0 = off) as
    `settings.load_settings` checks them.
    The vision projector (`mmproj`, else an mmproj*.gguf beside the GGUF) is placed beside the model
    as `mmproj-*.gguf`, where LM Studio looks for it."""
    gguf = Path(gguf)
    view = read_view(gguf)
    summary = exportable(view)
    projector = choose_mmproj(view, mmproj)
    if mode not in MODES:
        raise QwythosError(f"unknown mode {mode!r}", f"use one of {', '.join(MODES)}")
    if not OWNER_RE.match(publisher):
        raise QwythosError(
            f"--publisher {publisher!r} is not an LM Studio owner name",
            f"use lower-case letters, digits and single dashes, e.g. {PUBLISHER}",
        )
    context, draft = load_settings(summary, "LM Studio", context, draft)
    home = Path(home).expanduser() if home is not None else lmstudio_home()
    root = Path(models_dir).expanduser() if models_dir is not None else models_folder(home)
    folder = model_folder_name(gguf)
    dest = root / publisher / folder / gguf.name
    doc = model_yaml(
        publisher=publisher,
        folder=folder,
        size_bytes=summary.file_size,
        draft=draft,
        thinking_switch=summary.chat_template_thinking,
        context=context,
        max_context=summary.trained_context,
        vision=projector is not None,
    )
    key = doc["model"]
    hub_dir = home / "hub" / "models" / publisher / artifact_name(folder)
    outputs = {
        hub_dir / "model.yaml": render_model_yaml(doc, gguf.name).encode(),
        hub_dir / "manifest.json": manifest_json(doc).encode(),
    }
    # Check every destination before touching any.
    same = {p: p.is_file() and p.read_bytes() == data for p, data in outputs.items()}
    for p in outputs:
        if p.exists() and not same[p]:
            raise QwythosError(
                f"{p} already exists with other content",
                "remove it yourself (it may hold your own settings) or pick another --publisher",
            )
    ensure_writable_dir(dest.parent, "LM Studio model folder")
    ensure_writable_dir(hub_dir, "LM Studio hub folder")
    placed: Placement = place_file(gguf, dest, mode)
    mm_dest = None
    if projector is not None:
        name = projector.path.name
        mm_dest = dest.parent / (name if name.startswith("mmproj-") else f"mmproj-{name}")
        place_file(projector.path, mm_dest, mode)
    for p, data in outputs.items():
        if not same[p]:
            with atomic_output(p) as tmp:
                tmp.write_bytes(data)
    lms_import = _quote_cmd("lms", "import", os.fspath(gguf), "--user-repo", f"{publisher}/{folder}", "-y")
    load = ["lms", "load", key]
    if draft > 0:
        load += ["--speculative-draft-mtp", "--speculative-draft-max-tokens", str(draft)]
    load += ["-c", str(context)]
    return LMStudioExport(
        gguf=gguf,
        dest=dest,
        model_yaml=hub_dir / "model.yaml",
        manifest=hub_dir / "manifest.json",
        model_key=key,
        concrete_key=doc["base"][0]["key"],
        mode=mode,
        action=placed.action,
        yaml_action="unchanged" if all(same.values()) else "written",
        has_mtp=summary.mtp_present,
        draft=draft,
        context=context,
        lms_command=lms_import + LMS_FLAGS[mode],
        load_command=_quote_cmd(*load),
        yaml_text=outputs[hub_dir / "model.yaml"].decode(),
        warnings=list(summary.warnings),
        mmproj=mm_dest,
        mmproj_note=projector.note if projector is not None else None,
    )
