"""The one Hugging Face Hub client: downloads for convert and `mtp restore`, the calls upload makes.

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
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from huggingface_hub.utils import filter_repo_objects

from qwythos.core.errors import QwythosError
from qwythos.core.fileio import ensure_writable_dir

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
    "preprocessor_config.json",  # image mean/std: `convert --mmproj` stores them in the projector
    "processor_config.json",
)
WEIGHT_PATTERNS: tuple[str, ...] = ("*.safetensors",)
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
SUMS_NAME = "SHA256SUMS"
INDEX_NAME = "model.safetensors.index.json"

Progress = Callable[[str, int, int], None]  # (path_in_repo, index, total)


class HubClient(Protocol):
    """The Hub operations qwythos uses."""

    def list_files(self, repo_id: str, revision: str | None) -> list[str]: ...
    def weight_map(self, repo_id: str, revision: str | None, files: list[str]) -> dict[str, str]: ...
    def snapshot(self, repo_id: str, local_dir: Path, files: list[str], revision: str | None) -> Path: ...
    def token(self) -> str | None: ...
    def create_repo(self, repo_id: str, *, private: bool, token: str) -> str: ...
    def commit(
        self, repo_id: str, files: list[tuple[str, Path | bytes]], *, token: str, message: str
    ) -> str | None: ...


class HfClient:
    """The real client: huggingface_hub (endpoint and cache from its usual environment variables,
    or `endpoint` given here, e.g. a local stand-in server in tests)."""

    def __init__(self, endpoint: str | None = None) -> None:
        self.endpoint = endpoint
        _quiet_hub_logs()

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

    def commit(
        self, repo_id: str, files: list[tuple[str, Path | bytes]], *, token: str, message: str
    ) -> str | None:
        """All `(path_in_repo, file or bytes)` in one commit: the large files are uploaded first and
        the commit is made only when all are there, so a failed upload leaves the repo as it was."""
        from huggingface_hub import CommitOperationAdd

        ops = [
            CommitOperationAdd(
                path_in_repo=path, path_or_fileobj=data if isinstance(data, bytes) else str(data)
            )
            for path, data in files
        ]
        info = self._api(token).create_commit(repo_id, operations=ops, commit_message=message)
        return getattr(info, "commit_url", None)


def hub_error(repo_id: str, e: Exception) -> QwythosError:
    """One message for anything the Hub or the network raised, sorted by huggingface_hub's types."""
    from huggingface_hub import errors as hf

    if isinstance(e, hf.GatedRepoError):  # a subclass of RepositoryNotFoundError: test it first
        return QwythosError(
            f"{repo_id} is gated on the Hugging Face Hub",
            "accept the model's terms on its Hub page, then log in (`hf auth login`)",
        )
    if isinstance(e, hf.RevisionNotFoundError):
        return QwythosError(f"{repo_id}: revision not found", "check --revision")
    if isinstance(e, hf.RepositoryNotFoundError):
        return QwythosError(
            f"{repo_id} was not found on the Hugging Face Hub (or needs a login)",
            "check the repo id (owner/name) and, for a private repo, your token (`hf auth login`)",
        )
    if isinstance(e, hf.EntryNotFoundError) and not isinstance(e, hf.LocalEntryNotFoundError):
        return QwythosError(f"{repo_id}: a file is missing from the repo: {e}", "check the repo id")
    if isinstance(e, (hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled, *_network_errors())) or _offline():
        return QwythosError(
            f"cannot download {repo_id} from the Hugging Face Hub: offline or the Hub is unreachable, "
            "and no complete copy is cached",
            "connect to the network (and unset HF_HUB_OFFLINE), or pass a local folder",
        )
    return QwythosError(f"Hub request for {repo_id} failed: {type(e).__name__}: {e}", "check your network")


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection and timeout errors of the HTTP client huggingface_hub uses (httpx or requests)."""
    kinds: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for mod, names in (("httpx", ("TransportError",)), ("requests", ("ConnectionError", "Timeout"))):
        try:
            m = __import__(mod)
        except ImportError:
            continue
        kinds += [getattr(m, n) for n in names if hasattr(m, n)]
    return tuple(kinds)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")


def looks_like_hub_id(src: str) -> bool:
    """`owner/name` that is not a local path."""
    return bool(HUB_ID_RE.match(src)) and not src.startswith((".", "/", "~"))


def fetch_checkpoint(repo_id: str) -> Path:
    """Download (or reuse from the Hugging Face cache) what converting `repo_id` needs: config,
    tokenizer files and the safetensors."""
    from huggingface_hub import snapshot_download

    _quiet_hub_logs()
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=[*META_PATTERNS, *WEIGHT_PATTERNS]))
    except Exception as e:  # noqa: BLE001 - sorted by type in hub_error
        raise hub_error(repo_id, e) from None
    if _offline():  # offline, snapshot_download returns whatever part of the cache exists
        missing = _incomplete(folder)
        if missing:
            raise QwythosError(
                f"the Hugging Face cache holds only part of {repo_id} ({missing} missing) and downloads "
                "are off (HF_HUB_OFFLINE is set)",
                "unset HF_HUB_OFFLINE and connect to finish the download, or pass a complete local folder",
            )
    return folder


def _incomplete(folder: Path) -> str | None:
    """What an offline cached snapshot lacks for converting (config, index shards, any weights)."""
    if not (folder / "config.json").is_file():
        return "config.json"
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        except (OSError, ValueError, AttributeError):
            return INDEX_NAME
        absent = [n for n in shards if not (folder / n).is_file()]
        return (
            f"{absent[0]} and {len(absent) - 1} more shard(s)" if len(absent) > 1 else (absent or [None])[0]
        )
    return None if any(folder.glob("*.safetensors")) else "the *.safetensors weights"


def _quiet_hub_logs() -> None:
    """huggingface_hub logs each retry ("Retrying in 1s [Retry 1/5]"): the user gets one message."""
    import logging

    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


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
        raise hub_error(repo_id, e) from e
    return DownloadResult(repo_id, local_dir, files, shards, dry_run)
