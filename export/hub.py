"""Download what conversion needs from the Hugging Face Hub; upload a folder of GGUFs with a card.

All network access goes through a `HubClient` (the real one wraps `huggingface_hub`), so tests use
a local stand-in and never touch the network. Downloads go into a plain folder with
`huggingface_hub.snapshot_download(local_dir=...)`. Resuming, as huggingface_hub 2.x does it: a
rerun skips every file already complete (its etag is recorded under `<dir>/.cache/huggingface/`)
and fetches only the rest; within a run a dropped connection continues with an HTTP Range
request. A file cut off by killing the process restarts from zero (2.x no longer keeps partial
files between runs), so for the 9B shards (~4-5 GB each) progress is lost per shard, not per run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from huggingface_hub.utils import filter_repo_objects

from qwythos.errors import QwythosError
from qwythos.export import card
from qwythos.export.gguf_meta import read_gguf_summary
from qwythos.export.modelfile import parse_modelfile, to_request
from qwythos.export.ollama import ModelfileSpec, render
from qwythos.fileio import ensure_writable_dir, sha256_file

#: Everything `qwythos convert` reads besides the weights.
META_PATTERNS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "model.safetensors.index.json",
)
WEIGHT_PATTERNS: tuple[str, ...] = ("*.safetensors",)
SUMS_NAME = "SHA256SUMS"
INDEX_NAME = "model.safetensors.index.json"
MANIFEST_GLOBS: tuple[str, ...] = ("*manifest*.json",)

Progress = Callable[[str, int, int], None]  # (path_in_repo, index, total)


class HubClient(Protocol):
    """The Hub operations qwythos uses."""

    def list_files(self, repo_id: str, revision: str | None) -> list[str]: ...
    def weight_map(self, repo_id: str, revision: str | None, files: list[str]) -> dict[str, str]: ...
    def snapshot(self, repo_id: str, local_dir: Path, files: list[str], revision: str | None) -> Path: ...
    def token(self) -> str | None: ...
    def create_repo(self, repo_id: str, *, private: bool, token: str) -> str: ...
    def upload(self, repo_id: str, data: Path | bytes, path_in_repo: str, *, token: str) -> None: ...


class HfClient:
    """The real client: huggingface_hub (endpoint and cache from its usual environment variables,
    or `endpoint` given here, e.g. a local stand-in server in tests)."""

    def __init__(self, endpoint: str | None = None) -> None:
        self.endpoint = endpoint

    def _api(self, token: str | None = None):  # noqa: ANN202 - HfApi
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=token)

    def list_files(self, repo_id: str, revision: str | None) -> list[str]:
        return list(self._api().list_repo_files(repo_id, revision=revision))

    def weight_map(self, repo_id: str, revision: str | None, files: list[str]) -> dict[str, str]:
        """Tensor name -> file: from model.safetensors.index.json when the repo has one, else from
        the safetensors headers (range requests, no weights downloaded)."""
        api = self._api()
        if INDEX_NAME in files:
            index = api.hf_hub_download(repo_id, INDEX_NAME, revision=revision)
            return dict(json.loads(Path(index).read_text()).get("weight_map", {}))
        out: dict[str, str] = {}
        for f in files:
            if f.endswith(".safetensors"):
                meta = api.parse_safetensors_file_metadata(repo_id, f, revision=revision)
                out.update(dict.fromkeys(meta.tensors, f))
        return out

    def snapshot(self, repo_id: str, local_dir: Path, files: list[str], revision: str | None) -> Path:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                repo_id, local_dir=local_dir, allow_patterns=files, revision=revision, endpoint=self.endpoint
            )
        )

    def token(self) -> str | None:
        from huggingface_hub import get_token

        return get_token()

    def create_repo(self, repo_id: str, *, private: bool, token: str) -> str:
        return str(self._api(token).create_repo(repo_id, private=private, exist_ok=True))

    def upload(self, repo_id: str, data: Path | bytes, path_in_repo: str, *, token: str) -> None:
        self._api(token).upload_file(
            path_or_fileobj=data if isinstance(data, bytes) else str(data),
            path_in_repo=path_in_repo,
            repo_id=repo_id,
            commit_message=f"qwythos upload: {path_in_repo}",
        )


def _hub_error(repo_id: str, e: Exception) -> QwythosError:
    name = type(e).__name__
    hints = {
        "RepositoryNotFoundError": "check the repo id (owner/name) and, for a private repo, your token",
        "GatedRepoError": "accept the model's terms on its Hub page, then log in (`hf auth login`)",
        "RevisionNotFoundError": "check --revision",
        "LocalEntryNotFoundError": "you are offline: connect, or unset HF_HUB_OFFLINE",
    }
    return QwythosError(
        f"Hub request for {repo_id} failed: {name}: {e}", hints.get(name, "check your network")
    )


# ---------------------------------------------------------------------------------------- download


@dataclass
class DownloadResult:
    repo_id: str
    local_dir: Path
    files: list[str]
    mtp_shards: list[str]
    dry_run: bool


def mtp_shards(weight_map: dict[str, str]) -> list[str]:
    """The safetensors files holding `mtp.*` tensors (the MTP head), from a name -> file map."""
    return sorted({f for name, f in weight_map.items() if name.startswith("mtp.") or ".mtp." in name})


def download(
    repo_id: str,
    local_dir: Path | None = None,
    *,
    include: list[str] | tuple[str, ...] = (),
    mtp_only: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    client: HubClient | None = None,
) -> DownloadResult:
    """Fetch config, tokenizer files and weights (or, with `mtp_only`, only the shards with mtp.*)."""
    client = client or HfClient()
    local_dir = Path(local_dir) if local_dir else Path(repo_id.split("/")[-1])
    try:
        listing = client.list_files(repo_id, revision)
        shards: list[str] = []
        if mtp_only:
            shards = mtp_shards(client.weight_map(repo_id, revision, listing))
            if not shards:
                raise QwythosError(
                    f"{repo_id} has no mtp.* tensors (no MTP head in its safetensors)",
                    "take the head from Qwen/Qwen3.5-9B or from an -MTP- GGUF (`qwythos mtp`)",
                )
            patterns = [*META_PATTERNS, *shards, *include]
        else:
            patterns = [*META_PATTERNS, *WEIGHT_PATTERNS, *include]
        files = sorted(filter_repo_objects(listing, allow_patterns=patterns))
        if "config.json" not in files:
            raise QwythosError(
                f"{repo_id} has no config.json", "pass a Hugging Face model repo (safetensors)"
            )
        if not any(f.endswith(".safetensors") for f in files):
            raise QwythosError(f"{repo_id} has no .safetensors weights", "pass a safetensors model repo")
        if not dry_run:
            ensure_writable_dir(local_dir, "download folder")
            client.snapshot(repo_id, local_dir, files, revision)
    except QwythosError:
        raise
    except Exception as e:  # huggingface_hub / network errors -> one message
        raise _hub_error(repo_id, e) from e
    return DownloadResult(repo_id, local_dir, files, shards, dry_run)


# ------------------------------------------------------------------------------------------ upload


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


def _pick_default(rows: list[card.QuantRow]) -> card.QuantRow:
    order = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
    for q in order:
        for r in rows:
            if r.quant == q and not r.has_mtp:
                return r
    return min(rows, key=lambda r: r.size_bytes)


def plan_upload(folder: Path, repo_id: str, *, private: bool = False, dry_run: bool = False) -> UploadPlan:
    """Validate the folder's GGUFs and list every file to upload (GGUFs first, card last)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise QwythosError(f"{folder} is not a folder", "pass the folder holding the quantized GGUFs")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise QwythosError(f"{repo_id!r} is not a repo id", "use owner/name, e.g. empero-ai/Qwythos-9B-GGUF")
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise QwythosError(f"{folder} holds no .gguf files", "run `qwythos quantize` into it first")
    sums_path = folder / SUMS_NAME
    sums = read_sums(sums_path) if sums_path.is_file() else {}
    rows: list[card.QuantRow] = []
    items: list[UploadItem] = []
    for g in ggufs:
        s = read_gguf_summary(g)  # refuses anything that is not a qwen35 GGUF
        digest = sums.get(g.name) or sha256_file(g)
        rows.append(card.QuantRow(g.name, s.quant, s.size_bytes, digest, s.has_mtp))
        items.append(UploadItem(g.name, s.size_bytes, g))
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
        pick = _pick_default(rows)
        ollama_file = pick.file
        text = render(
            ModelfileSpec(
                from_path=f"./{pick.file}",
                file_name=pick.file,
                quant=pick.quant,
                has_mtp=pick.has_mtp,
                draft=3 if pick.has_mtp else 0,
            )
        ).encode()
        items.append(UploadItem("Modelfile", len(text), None, text))
    readme = card.render_card(repo_id, rows, ollama_file=ollama_file, has_sums=sums_path.is_file()).encode()
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
    try:
        plan.url = client.create_repo(repo_id, private=private, token=token)
        for i, item in enumerate(plan.items):
            if progress:
                progress(item.path_in_repo, i, len(plan.items))
            client.upload(repo_id, item.local if item.local else item.data, item.path_in_repo, token=token)
    except QwythosError:
        raise
    except Exception as e:
        raise _hub_error(repo_id, e) from e
    if progress:
        progress("done", len(plan.items), len(plan.items))
    return plan
