"""Hub download/upload against a local stand-in client (no test touches the network)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import gguf
import pytest
from huggingface_hub.utils import filter_repo_objects
from typer.testing import CliRunner

from qwythos.cli import app
from qwythos.core import hub
from qwythos.core.errors import QwythosError
from qwythos.core.model import release as release_facts
from qwythos.export import upload
from qwythos.export.modelfile import parse_modelfile, to_request
from qwythos.testing import stubs


class FakeHub:
    """A Hub whose repos are local folders: what huggingface_hub would list, download and store."""

    def __init__(self, root: Path, token: str | None = "hf_test") -> None:
        self.root = root
        self._token = token
        self.created: list[tuple[str, bool]] = []
        self.uploads: list[tuple[str, str]] = []
        self.snapshots: list[list[str]] = []
        self.commits: list[tuple[str, list[str], str]] = []
        self.fail_on: str | None = None

    def _repo(self, repo_id: str) -> Path:
        return self.root / repo_id

    def list_files(self, repo_id: str, revision: str | None) -> list[str]:
        base = self._repo(repo_id)
        if not base.is_dir():
            raise FileNotFoundError(f"RepositoryNotFound {repo_id}")
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())

    def weight_map(self, repo_id: str, revision: str | None, files: list[str]) -> dict[str, str]:
        index = self._repo(repo_id) / "model.safetensors.index.json"
        return json.loads(index.read_text())["weight_map"]

    def snapshot(self, repo_id: str, local_dir: Path, files: list[str], revision: str | None) -> Path:
        chosen = list(filter_repo_objects(self.list_files(repo_id, revision), allow_patterns=files))
        self.snapshots.append(chosen)
        for f in chosen:
            dest = local_dir / f
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():  # resumable: what is there is kept
                shutil.copyfile(self._repo(repo_id) / f, dest)
        return local_dir

    def token(self) -> str | None:
        return self._token

    def create_repo(self, repo_id: str, *, private: bool, token: str) -> str:
        self.created.append((repo_id, private))
        self._repo(repo_id).mkdir(parents=True, exist_ok=True)
        return f"https://huggingface.co/{repo_id}"

    def commit(self, repo_id: str, files: list[tuple[str, Path | bytes]], *, token: str, message: str) -> str:
        """huggingface_hub's create_commit: every file is read (uploaded) first; the repo changes
        only when all of them arrived, in one commit."""
        staged = []
        for path_in_repo, data in files:
            if self.fail_on == path_in_repo:
                raise ConnectionError(f"connection reset while uploading {path_in_repo}")
            staged.append((path_in_repo, data if isinstance(data, bytes) else Path(data).read_bytes()))
        self.commits.append((message, [p for p, _ in staged], token))
        for path_in_repo, data in staged:
            self.uploads.append((path_in_repo, token))
            (self._repo(repo_id) / path_in_repo).write_bytes(data)
        return f"https://huggingface.co/{repo_id}/commit/{len(self.commits)}"


@pytest.fixture
def fake(tmp_path: Path) -> FakeHub:
    root = tmp_path / "hubroot"
    src = root / "Qwen" / "Qwen3.5-9B"
    src.mkdir(parents=True)
    weight_map = {
        "model.language_model.embed_tokens.weight": "model-00001-of-00003.safetensors",
        "model.language_model.layers.0.mlp.up_proj.weight": "model-00002-of-00003.safetensors",
        "mtp.fc.weight": "model-00003-of-00003.safetensors",
        "mtp.layers.0.self_attn.q_proj.weight": "model-00003-of-00003.safetensors",
    }
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for name in sorted(set(weight_map.values())):
        (src / name).write_bytes(name.encode() * 10)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (src / name).write_text("{}")
    for name in ("README.md", ".gitattributes", "merges.txt", "vocab.json", "chat_template.jinja"):
        (src / name).write_text("x")
    (src / "extra").mkdir()
    (src / "extra" / "notes.txt").write_text("x")
    # a repo without an MTP head
    q = root / "empero-ai" / "Qwythos"
    q.mkdir(parents=True)
    (q / "config.json").write_text("{}")
    (q / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a.weight": "model.safetensors"}})
    )
    (q / "model.safetensors").write_bytes(b"w")
    return FakeHub(root)


def test_download_fetches_only_what_conversion_needs(fake: FakeHub, tmp_path: Path) -> None:
    out = tmp_path / "dl"
    r = hub.download("Qwen/Qwen3.5-9B", out, client=fake)
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert got == r.files
    assert "README.md" not in got and ".gitattributes" not in got and "extra/notes.txt" not in got
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json"} <= set(
        got
    )
    assert {"merges.txt", "vocab.json", "chat_template.jinja", "generation_config.json"} <= set(got)
    assert sum(f.endswith(".safetensors") for f in got) == 3


def test_download_mtp_only_reads_the_index_first(fake: FakeHub, tmp_path: Path) -> None:
    out = tmp_path / "dl"
    r = hub.download("Qwen/Qwen3.5-9B", out, mtp_only=True, client=fake)
    assert r.mtp_shards == ["model-00003-of-00003.safetensors"]
    assert [f for f in r.files if f.endswith(".safetensors")] == ["model-00003-of-00003.safetensors"]
    assert (out / "model-00003-of-00003.safetensors").exists()
    assert not (out / "model-00001-of-00003.safetensors").exists()
    assert (out / "config.json").exists() and (out / "model.safetensors.index.json").exists()


def test_download_include_and_dry_run(fake: FakeHub, tmp_path: Path) -> None:
    r = hub.download("Qwen/Qwen3.5-9B", tmp_path / "dl", include=["README.md"], dry_run=True, client=fake)
    assert "README.md" in r.files and not (tmp_path / "dl").exists() and fake.snapshots == []


def test_download_resumes_keeping_complete_files(fake: FakeHub, tmp_path: Path) -> None:
    out = tmp_path / "dl"
    hub.download("Qwen/Qwen3.5-9B", out, mtp_only=True, client=fake)
    (out / "config.json").write_text('{"kept": true}')
    hub.download("Qwen/Qwen3.5-9B", out, client=fake)
    assert json.loads((out / "config.json").read_text()) == {"kept": True}
    assert (out / "model-00001-of-00003.safetensors").exists()


def test_download_errors(fake: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(QwythosError, match="no mtp"):
        hub.download("empero-ai/Qwythos", tmp_path / "a", mtp_only=True, client=fake)
    with pytest.raises(QwythosError, match="Hub request for nobody/none failed"):
        hub.download("nobody/none", tmp_path / "b", client=fake)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(QwythosError, match="cannot write into download folder"):
        hub.download("Qwen/Qwen3.5-9B", blocker / "sub", client=fake)


@pytest.fixture
def release(tmp_path: Path) -> Path:
    d = tmp_path / "release"
    d.mkdir()
    a = stubs.write_stub_gguf(d / release_facts.gguf_file_name("Q4_K_M"), nextn_layers=0)
    b = stubs.write_stub_gguf(
        d / release_facts.gguf_file_name("Q8_0", mtp=True), file_type=gguf.LlamaFileType.MOSTLY_Q8_0
    )
    sums = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in (a, b))
    (d / "SHA256SUMS").write_text(sums)
    (d / "quantize-manifest.json").write_text(json.dumps({"files": [a.name, b.name]}))
    return d


def test_upload_dry_run_lists_every_file_and_destination(release: Path) -> None:
    plan = upload.upload(release, "me/Qwythos-GGUF", dry_run=True, client=None)
    dests = [plan.destination(i) for i in plan.items]
    assert dests == [
        "hf://me/Qwythos-GGUF/Qwythos-9B-Claude-Mythos-5-1M-MTP-Q8_0.gguf",
        "hf://me/Qwythos-GGUF/Qwythos-9B-Claude-Mythos-5-1M-Q4_K_M.gguf",
        "hf://me/Qwythos-GGUF/quantize-manifest.json",
        "hf://me/Qwythos-GGUF/SHA256SUMS",
        "hf://me/Qwythos-GGUF/Modelfile",
        "hf://me/Qwythos-GGUF/README.md",
    ]
    assert [i.source for i in plan.items][-2:] == ["(generated)", "(generated)"]


def test_upload_creates_repo_and_uploads_exact_bytes_and_card(
    release: Path, fake: FakeHub, monkeypatch
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    seen: list[str] = []
    plan = upload.upload(
        release, "me/Q-GGUF", private=True, client=fake, progress=lambda p, i, n: seen.append(p)
    )
    assert fake.created == [("me/Q-GGUF", True)] and plan.url == "https://huggingface.co/me/Q-GGUF"
    assert seen[-1] == "done" and len(seen) == len(plan.items) + 1
    repo = fake.root / "me" / "Q-GGUF"
    for f in release.iterdir():
        assert (repo / f.name).read_bytes() == f.read_bytes()
    assert all(tok == "hf_test" for _, tok in fake.uploads)
    # one commit holding every file of the plan
    assert len(fake.commits) == 1 and fake.commits[0][1] == [i.path_in_repo for i in plan.items]
    assert "Q4_K_M" in fake.commits[0][0] and plan.commit_url.endswith("/commit/1")
    # the generated Modelfile points at the Q4_K_M file next to it and is valid for Ollama
    req = to_request(parse_modelfile((repo / "Modelfile").read_text()), repo)
    assert req.model == "./Qwythos-9B-Claude-Mythos-5-1M-Q4_K_M.gguf" and req.model_path is not None
    card = (repo / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\n")
    sums = dict(line.split()[::-1] for line in (release / "SHA256SUMS").read_text().splitlines())
    for name, digest in sums.items():
        row = next(line for line in card.splitlines() if line.startswith(f"| [{name}]"))
        assert digest in row
        assert ("| yes |" in row) is ("MTP" in name)
    for tool in ("### llama.cpp", "### Ollama", "### LM Studio", "### KoboldCpp"):
        assert tool in card
    assert "temperature 0.6, top_p 0.95, top_k 20, repeat penalty 1.05" in card
    assert "sha256sum -c SHA256SUMS" in card
    (release / "SHA256SUMS").unlink()
    plan = upload.upload(release, "me/Q-GGUF", dry_run=True)
    assert "SHA256SUMS" not in plan.items[-1].data.decode()


def test_a_failed_upload_leaves_the_repo_as_it_was(release: Path, fake: FakeHub, monkeypatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    repo = fake.root / "me" / "Q-GGUF"
    repo.mkdir(parents=True)
    (repo / "README.md").write_text("the old card")
    fake.fail_on = "README.md"  # the last file: everything before it was already sent
    with pytest.raises(QwythosError, match="me/Q-GGUF"):
        upload.upload(release, "me/Q-GGUF", client=fake)
    assert fake.commits == [] and fake.uploads == []
    assert sorted(p.name for p in repo.iterdir()) == ["README.md"]
    assert (repo / "README.md").read_text() == "the old card"


def test_real_client_commits_every_file_in_one_create_commit(release: Path, monkeypatch) -> None:
    """HfClient.commit: one HfApi.create_commit call, one CommitOperationAdd per file."""
    from huggingface_hub import CommitOperationAdd, HfApi

    calls: list[dict] = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: f"https://hf.test/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_file", lambda *a, **k: pytest.fail("one file per commit"))

    def create_commit(self, repo_id, operations, *, commit_message, **kw):
        calls.append(
            {"repo": repo_id, "ops": list(operations), "message": commit_message, "token": self.token}
        )

    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    plan = upload.upload(release, "me/one", token="hf_x", client=hub.HfClient())
    assert len(calls) == 1 and calls[0]["repo"] == "me/one" and calls[0]["token"] == "hf_x"
    ops = calls[0]["ops"]
    assert all(isinstance(o, CommitOperationAdd) for o in ops)
    assert [o.path_in_repo for o in ops] == [i.path_in_repo for i in plan.items]
    readme = next(o for o in ops if o.path_in_repo == "README.md")
    assert readme.path_or_fileobj == next(i.data for i in plan.items if i.path_in_repo == "README.md")


def test_upload_without_token_is_a_clear_error(release: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    fake = FakeHub(tmp_path / "root", token=None)
    with pytest.raises(QwythosError, match="no Hugging Face token"):
        upload.upload(release, "me/x", client=fake)
    assert fake.created == []
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    upload.upload(release, "me/x", client=fake)
    assert {tok for _, tok in fake.uploads} == {"hf_env"}


def test_upload_refuses_bad_folders(release: Path, tmp_path: Path) -> None:
    stubs.write_stub_gguf(release / "other.gguf", arch="llama")
    with pytest.raises(QwythosError, match="not qwen35"):
        upload.upload(release, "me/x", dry_run=True)
    (release / "other.gguf").unlink()
    (release / "Modelfile").write_text("FROM /somewhere/else.gguf\n")
    with pytest.raises(QwythosError, match="not a GGUF in"):
        upload.upload(release, "me/x", dry_run=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QwythosError, match="no .gguf"):
        upload.upload(empty, "me/x", dry_run=True)
    with pytest.raises(QwythosError, match="not a repo id"):
        upload.upload(release, "no-slash", dry_run=True)


def test_upload_uses_an_existing_modelfile(release: Path, fake: FakeHub) -> None:
    from qwythos.export.ollama import export_ollama

    export_ollama(release / release_facts.gguf_file_name("Q8_0", mtp=True))
    plan = upload.upload(release, "me/y", client=fake)
    mf = next(i for i in plan.items if i.path_in_repo == "Modelfile")
    assert mf.local == release / "Modelfile"
    card = (fake.root / "me" / "y" / "README.md").read_text()
    assert "Download `Qwythos-9B-Claude-Mythos-5-1M-MTP-Q8_0.gguf` and the `Modelfile`" in card


def test_cli_upload_dry_run_and_missing_token(release: Path, monkeypatch) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["upload", str(release), "me/z", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "-> hf://me/z/README.md" in res.stdout and "-> hf://me/z/SHA256SUMS" in res.stdout
    res = runner.invoke(app, ["upload", str(release), "me/z", "--dry-run", "--json"])
    data = json.loads(res.stdout)
    assert len(data["files"]) == 6 and data["dry_run"] is True
    # no token anywhere: refused before any network call
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hub.HfClient, "token", lambda self: None)
    monkeypatch.setattr(hub.HfClient, "create_repo", lambda *a, **k: pytest.fail("network"))
    res = runner.invoke(app, ["upload", str(release), "me/z"])
    assert res.exit_code == 1 and "no Hugging Face token" in res.output


# ------------------------------------------------------------- the real client against a stand-in Hub


class _StandInHub:
    """A local HTTP server answering the few Hub routes huggingface_hub uses to download."""

    SHA = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, root: Path) -> None:
        import http.server
        import threading
        import urllib.parse

        self.root = root
        self.gets: list[str] = []
        hub_ = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _route(self) -> None:
                path = urllib.parse.unquote(urllib.parse.urlparse(self.path).path)
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"]:
                    repo = "/".join(parts[2:4])
                    base = hub_.root / repo
                    if not base.is_dir():
                        return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"})
                    files = sorted(p for p in base.rglob("*") if p.is_file())
                    rel = [str(p.relative_to(base)) for p in files]
                    if parts[4] == "revision":
                        body = {"id": repo, "sha": hub_.SHA, "siblings": [{"rfilename": r} for r in rel]}
                    else:  # tree
                        body = [
                            {"type": "file", "path": r, "size": p.stat().st_size, "oid": hub_.SHA}
                            for r, p in zip(rel, files, strict=True)
                        ]
                    return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
                # /{owner}/{name}/resolve/{rev}/{file}
                repo, file = "/".join(parts[:2]), "/".join(parts[4:])
                f = hub_.root / repo / file
                if parts[2:3] != ["resolve"] or not f.is_file():
                    return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
                data = f.read_bytes()
                headers = {
                    "X-Repo-Commit": hub_.SHA,
                    "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                    "Accept-Ranges": "bytes",
                }
                rng = self.headers.get("Range")
                if self.command == "GET":
                    hub_.gets.append(file if not rng else f"{file} {rng}")
                if rng:
                    start, _, end = rng.removeprefix("bytes=").partition("-")
                    stop = int(end) + 1 if end else len(data)
                    part = data[int(start) : stop]
                    headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
                    return self._send(206, part, headers)
                return self._send(200, data, headers)

            do_GET = _route
            do_HEAD = _route

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in(fake: FakeHub, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    server = _StandInHub(fake.root)
    yield server
    server.close()


def test_real_client_downloads_from_a_stand_in_hub(
    stand_in: _StandInHub, fake: FakeHub, tmp_path: Path
) -> None:
    client = hub.HfClient(endpoint=stand_in.url)
    out = tmp_path / "dl"
    r = hub.download("Qwen/Qwen3.5-9B", out, mtp_only=True, client=client)
    assert r.mtp_shards == ["model-00003-of-00003.safetensors"]
    src = fake.root / "Qwen" / "Qwen3.5-9B"
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and ".cache" not in p.parts)
    assert got == r.files
    for f in got:
        assert (out / f).read_bytes() == (src / f).read_bytes()
    assert not (out / "model-00001-of-00003.safetensors").exists()
    # a second run fetches only what is missing: complete files are not downloaded again
    stand_in.gets.clear()
    hub.download("Qwen/Qwen3.5-9B", out, client=client)
    fetched = {g.split(" ")[0] for g in stand_in.gets}
    assert "model-00001-of-00003.safetensors" in fetched
    assert "model-00003-of-00003.safetensors" not in fetched and "config.json" not in fetched
    with pytest.raises(QwythosError, match="nobody/none was not found on the Hugging Face Hub"):
        hub.download("nobody/none", tmp_path / "x", client=client)


def test_mtp_restore_from_a_hub_repo_reads_only_the_head_shard(
    stand_in: _StandInHub, fake: FakeHub, tmp_path: Path, monkeypatch
) -> None:
    """`qwythos mtp restore TRUNK --from REPO_ID`: config + index + the mtp.* shard, never the trunk's."""
    from gguf import GGUFReader

    from qwythos.convert.text import convert
    from qwythos.mtp.restore import restore

    trained = Path(__file__).resolve().parents[1] / "data" / "tiny-trained"
    shutil.copytree(trained, fake.root / "Qwen" / "Tiny-Trained")
    real_client = hub.HfClient
    monkeypatch.setattr(hub, "HfClient", lambda: real_client(endpoint=stand_in.url))
    monkeypatch.setenv("QWYTHOS_CACHE", str(tmp_path / "cache"))
    trunk = convert(trained, tmp_path / "trunk.gguf", mtp=False).output
    stand_in.gets.clear()
    got = restore(trunk, "Qwen/Tiny-Trained", tmp_path / "hub.gguf").output
    fetched = {g.split(" ")[0] for g in stand_in.gets}
    assert "model-00002-of-00002.safetensors" in fetched  # the shard holding mtp.*
    assert "model-00001-of-00002.safetensors" not in fetched  # the trunk's weights are never read
    local = restore(trunk, trained, tmp_path / "local.gguf").output
    a, b = GGUFReader(got), GGUFReader(local)
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    assert all(bytes(x.data) == bytes(y.data) for x, y in zip(a.tensors, b.tensors, strict=True))
    stand_in.gets.clear()  # a second restore uses the cached shard
    restore(trunk, "Qwen/Tiny-Trained", tmp_path / "again.gguf")
    assert not any(g.endswith(".safetensors") for g in stand_in.gets)
