"""Upload a folder of GGUFs to the Hugging Face Hub with a model card and a Modelfile, in one commit
(all files or none: `HubClient.commit`, huggingface_hub `create_commit`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from qwythos.core.drafting.lengths import DEFAULT_DRAFT
from qwythos.core.errors import QwythosError
from qwythos.core.fileio import sha256_file
from qwythos.core.gguf.mmproj import is_mmproj, read_mmproj_summary
from qwythos.core.gguf.view import read_view
from qwythos.core.hub import SUMS_NAME, HfClient, HubClient, Progress, hub_error
from qwythos.core.model.release import GGUF_REPO, pick_default
from qwythos.core.model.summary import exportable
from qwythos.export import card
from qwythos.export.modelfile import parse_modelfile, to_request
from qwythos.export.ollama import ModelfileSpec, render

MANIFEST_GLOBS: tuple[str, ...] = ("*manifest*.json",)


@dataclass
class UploadItem:
    path_in_repo: str
    size_bytes: int
    local: Path | None  # None: generated (README.md, a Modelfile the folder lacks)
    data: bytes | None = field(default=None, repr=False)

    @property
    def source(self) -> str:
        return str(self.local) if self.local else "(generated)"


@dataclass
class UploadPlan:
    repo_id: str
    private: bool
    items: list[UploadItem]
    rows: list[card.QuantRow]
    dry_run: bool
    url: str | None = None
    commit_url: str | None = None

    def destination(self, item: UploadItem) -> str:
        return f"hf://{self.repo_id}/{item.path_in_repo}"


def read_sums(path: Path) -> dict[str, str]:
    """`sha256sum` output (`HEX  name` or `HEX *name`) -> {name: hex}."""
    sums: dict[str, str] = {}
    for line in path.read_text().splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2 and len(parts[0]) == 64:
            sums[parts[1].lstrip("*").strip()] = parts[0].lower()
    return sums


def _checked_digest(g: Path, sums: dict[str, str], sums_path: Path) -> str:
    """The file's SHA-256, re-checked against SHA256SUMS (never trusted: it is published as proof)."""
    digest = sha256_file(g)
    if g.name in sums and sums[g.name] != digest:
        raise QwythosError(
            f"{g} does not match its line in {sums_path} (the file changed, or is damaged)",
            "run `qwythos quantize` into the folder again (it re-verifies and rewrites SHA256SUMS)",
        )
    return digest


def plan_upload(folder: Path, repo_id: str, *, private: bool = False, dry_run: bool = False) -> UploadPlan:
    """Validate the folder's GGUFs and list every file to upload (GGUFs first, card last)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise QwythosError(f"{folder} is not a folder", "pass the folder holding the quantized GGUFs")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise QwythosError(f"{repo_id!r} is not a repo id", f"use owner/name, e.g. {GGUF_REPO}")
    views = [read_view(g) for g in sorted(folder.glob("*.gguf"))]  # each header read once
    projectors = [v for v in views if is_mmproj(v)]  # mmproj*.gguf: arch clip
    models = [v for v in views if not is_mmproj(v)]
    if not models:
        raise QwythosError(f"{folder} holds no .gguf files", "run `qwythos quantize` into it first")
    sums_path = folder / SUMS_NAME
    sums = read_sums(sums_path) if sums_path.is_file() else {}
    rows: list[card.QuantRow] = []
    items: list[UploadItem] = []
    for v in models:
        s = exportable(v)  # refuses anything that is not a qwen35 GGUF
        digest = _checked_digest(v.path, sums, sums_path)
        rows.append(card.QuantRow(v.path.name, s.quant, s.file_size, digest, s.mtp_present))
        items.append(UploadItem(v.path.name, s.file_size, v.path))
    if len(projectors) > 1:
        raise QwythosError(
            f"{folder} holds {len(projectors)} vision projectors ({', '.join(v.path.name for v in projectors)})",
            "keep one mmproj*.gguf in the folder",
        )
    mm_row = None
    for v in projectors:  # the vision projector: listed in the card and SHA256SUMS like a quant
        m = read_mmproj_summary(v)
        digest = _checked_digest(v.path, sums, sums_path)
        mm_row = card.QuantRow(v.path.name, m.file_type or "?", m.file_size, digest, False)
        items.append(UploadItem(v.path.name, m.file_size, v.path))
    unlisted = sorted({v.path.name for v in views} - set(sums)) if sums else []
    stale = sorted(n for n in sums if n.endswith(".gguf") and not (folder / n).is_file())
    if unlisted or stale:
        raise QwythosError(
            f"{sums_path} does not list the folder's GGUFs: "
            + (
                f"{unlisted[0]} is missing from it"
                if unlisted
                else f"it names {stale[0]}, which is not in {folder}"
            ),
            "run `qwythos quantize` into the folder again (it rewrites SHA256SUMS), or remove SHA256SUMS",
        )
    for pattern in MANIFEST_GLOBS:
        for m in sorted(folder.glob(pattern)):
            items.append(UploadItem(m.name, m.stat().st_size, m))
    if sums_path.is_file():
        items.append(UploadItem(SUMS_NAME, sums_path.stat().st_size, sums_path))
    modelfile = folder / "Modelfile"
    if modelfile.is_file():
        req = to_request(parse_modelfile(modelfile.read_text(), str(modelfile)), folder, str(modelfile))
        target = req.model_path.resolve() if req.model_path else None
        if target is None or target.parent != folder.resolve() or target.suffix != ".gguf":
            raise QwythosError(
                f"{modelfile} has FROM {req.model!r}, not a GGUF in {folder}",
                "regenerate it with `qwythos export ollama FILE.gguf` or remove it (one is generated)",
            )
        ollama_file = target.name
        items.append(UploadItem("Modelfile", modelfile.stat().st_size, modelfile))
    else:
        pick = pick_default(rows)
        ollama_file = pick.file
        text = render(
            ModelfileSpec(
                from_path=f"./{pick.file}",
                file_name=pick.file,
                quant=pick.quant,
                has_mtp=pick.has_mtp,
                draft=DEFAULT_DRAFT if pick.has_mtp else 0,
                projector_path=f"./{mm_row.file}" if mm_row else None,
            )
        ).encode()
        items.append(UploadItem("Modelfile", len(text), None, text))
    readme = card.render_card(
        repo_id, rows, ollama_file=ollama_file, has_sums=sums_path.is_file(), mmproj=mm_row
    ).encode()
    items.append(UploadItem("README.md", len(readme), None, readme))
    return UploadPlan(repo_id, private, items, rows, dry_run)


def upload(
    folder: Path,
    repo_id: str,
    *,
    private: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    client: HubClient | None = None,
    progress: Progress | None = None,
) -> UploadPlan:
    """Create the repo if needed and upload the plan's files; with `dry_run` only return the plan."""
    plan = plan_upload(folder, repo_id, private=private, dry_run=dry_run)
    if dry_run:
        return plan
    client = client or HfClient()
    token = token or os.environ.get("HF_TOKEN") or client.token()
    if not token:
        raise QwythosError(
            f"no Hugging Face token to upload to {repo_id}",
            "pass --token, set HF_TOKEN, or run `hf auth login` (a token with write access)",
        )
    files = []
    for i, item in enumerate(plan.items):
        if progress:
            progress(item.path_in_repo, i, len(plan.items))
        files.append((item.path_in_repo, item.local if item.local else item.data))
    try:
        plan.url = client.create_repo(repo_id, private=private, token=token)
        # one commit for everything: a failed upload leaves the repository as it was
        plan.commit_url = client.commit(repo_id, files, token=token, message=commit_message(plan))
    except QwythosError:
        raise
    except Exception as e:
        raise hub_error(repo_id, e) from e
    if progress:
        progress("done", len(plan.items), len(plan.items))
    return plan


def commit_message(plan: UploadPlan) -> str:
    quants = ", ".join(f"{r.quant}{' +MTP' if r.has_mtp else ''}" for r in plan.rows)
    return f"qwythos upload: {len(plan.items)} files ({quants})"
