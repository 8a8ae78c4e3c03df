"""A Hugging Face folder from a stranger: every safetensors header field, index path and config
type set to an edge value (0, -1, 2**63, past the end, overlapping, another JSON type, a path out
of the folder) ends in one QwythosError naming the file - for convert's opener, `mtp check` and
`mtp restore --hf`'s head reader - and, through the CLI, in exit 1 with one message and no
traceback, within a time bound. Nothing outside the folder is opened."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from qwythos.convert.text import convert
from qwythos.core.errors import QwythosError
from qwythos.core.model.checkpoint import INDEX, open_checkpoint
from qwythos.export.engines import export_engine
from qwythos.export.vllm import VLLM
from qwythos.mtp.hf_check import check_hf
from qwythos.mtp.sources import open_hf_head

CLI_TIMEOUT_S = 120  # a bound against a hang, not a speed target

# ---- the folder and its files -----------------------------------------------------------------


@pytest.fixture
def folder(tiny_mtp_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny base-model folder (sharded, with an index and mtp.* tensors)."""
    return Path(shutil.copytree(tiny_mtp_dir, tmp_path / "m"))


def index_of(d: Path) -> dict:
    return json.loads((d / INDEX).read_text())


def mtp_shard(d: Path) -> Path:
    """The shard holding the head (what every entry point reads)."""
    return d / index_of(d)["weight_map"]["mtp.fc.weight"]


def read_shard(shard: Path) -> tuple[dict, bytes]:
    raw = shard.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_shard(shard: Path, header: object, data: bytes, *, raw_header: bytes | None = None) -> None:
    body = raw_header if raw_header is not None else json.dumps(header).encode()
    shard.write_bytes(struct.pack("<Q", len(body)) + body + data)


def _two_tensors(header: dict) -> tuple[str, str]:
    """Two tensors of the same byte size that lie one after the other (the first two norms)."""
    norms = sorted(
        (n for n, m in header.items() if n != "__metadata__" and len(m["shape"]) == 1),
        key=lambda n: header[n]["data_offsets"][0],
    )
    return norms[0], norms[1]


# ---- mutations: each returns a piece of the message it must produce ------------------------------


def header_length(value: int) -> Callable[[Path], str]:
    def mutate(d: Path) -> str:
        shard = mtp_shard(d)
        raw = bytearray(shard.read_bytes())
        raw[:8] = struct.pack("<Q", value % 2**64)
        shard.write_bytes(bytes(raw))
        return "truncated or corrupt"

    return mutate


def header_length_past_eof(d: Path) -> str:
    shard = mtp_shard(d)
    return header_length(shard.stat().st_size)(d)


def edit_entry(edit: Callable[[dict, str, str, int], None], message: str) -> Callable[[Path], str]:
    """Rewrite the header with `edit(header, first, second, data_len)` applied (data kept)."""

    def mutate(d: Path) -> str:
        shard = mtp_shard(d)
        header, data = read_shard(shard)
        a, b = _two_tensors(header)
        edit(header, a, b, len(data))
        write_shard(shard, header, data)
        return message

    return mutate


def _alias(h: dict, a: str, b: str, n: int) -> None:
    h[b]["data_offsets"] = list(h[a]["data_offsets"])


def _overlap(h: dict, a: str, b: str, n: int) -> None:
    h[b]["data_offsets"] = [x - 2 for x in h[b]["data_offsets"]]


def _past_eof(h: dict, a: str, b: str, n: int) -> None:
    h[b]["data_offsets"] = [x + n for x in h[b]["data_offsets"]]


def _set(field: str, value: object) -> Callable[[dict, str, str, int], None]:
    def edit(h: dict, a: str, b: str, n: int) -> None:
        h[a][field] = value

    return edit


def _entry_is(value: object) -> Callable[[dict, str, str, int], None]:
    def edit(h: dict, a: str, b: str, n: int) -> None:
        h[a] = value

    return edit


def _far(h: dict, a: str, b: str, n: int) -> None:
    begin, end = h[a]["data_offsets"]
    h[a]["data_offsets"] = [2**63, 2**63 + end - begin]


def _metadata(h: dict, a: str, b: str, n: int) -> None:
    h["__metadata__"] = ["not", "an", "object"]


def raw_header(body: bytes, message: str) -> Callable[[Path], str]:
    def mutate(d: Path) -> str:
        shard = mtp_shard(d)
        _, data = read_shard(shard)
        write_shard(shard, None, data, raw_header=body)
        return message

    return mutate


def shard_is_a_folder(d: Path) -> str:
    shard = mtp_shard(d)
    shard.unlink()
    shard.mkdir()
    return "is a folder"


HEADER_MUTATIONS = {
    "length 0": header_length(0),
    "length -1": header_length(-1),
    "length 2**63": header_length(2**63),
    "length past EOF": header_length_past_eof,
    "offsets aliasing": edit_entry(_alias, "share bytes"),
    "offsets overlapping": edit_entry(_overlap, "share bytes"),
    "offsets past EOF": edit_entry(_past_eof, "truncated: tensor"),
    "offsets negative": edit_entry(_set("data_offsets", [-2, 62]), "data_offsets"),
    "offsets 2**63": edit_entry(_far, "truncated: tensor"),
    "offsets strings": edit_entry(_set("data_offsets", ["0", "64"]), "data_offsets"),
    "offsets one": edit_entry(_set("data_offsets", [0]), "data_offsets"),
    "dtype unknown": edit_entry(_set("dtype", "Q4_K"), "unsupported dtype"),
    "dtype a number": edit_entry(_set("dtype", 5), "no dtype"),
    "shape vs bytes": edit_entry(_set("shape", [3]), "bytes for shape"),
    "shape negative": edit_entry(_set("shape", [-32]), "shape"),
    "shape 2**63": edit_entry(_set("shape", [2**63, 2**63]), "bytes for shape"),
    "shape a string": edit_entry(_set("shape", "32"), "shape"),
    "entry a list": edit_entry(_entry_is([1, 2]), "not a JSON object"),
    "metadata a list": edit_entry(_metadata, "__metadata__"),
    "header a list": raw_header(b"[1, 2, 3]", "not valid JSON"),
    "header not UTF-8": raw_header(b'{"\xff": 1}', "not valid JSON"),
    "header nested": raw_header(b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "name twice": raw_header(b'{"a": {}, "a": {}}', "appears twice"),
    "shard a folder": shard_is_a_folder,
}


def index_entry(value: str, message: str, *, prepare: Callable[[Path], None] | None = None) -> Callable:
    def mutate(d: Path) -> str:
        if prepare is not None:
            prepare(d)
        index = index_of(d)
        index["weight_map"]["mtp.fc.weight"] = value
        (d / INDEX).write_text(json.dumps(index))
        return message

    return mutate


def _link_out(d: Path) -> None:
    """A subfolder of the checkpoint that is a link to a folder outside it, holding a valid shard."""
    outside = d.parent / "outside"
    outside.mkdir()
    shutil.copy(mtp_shard(d), outside / "x.safetensors")
    (d / "sub").symlink_to(outside, target_is_directory=True)


def index_is(text: str, message: str) -> Callable[[Path], str]:
    def mutate(d: Path) -> str:
        (d / INDEX).write_text(text)
        return message

    return mutate


def index_metadata(value: object) -> Callable[[Path], str]:
    def mutate(d: Path) -> str:
        index = index_of(d)
        index["metadata"] = value
        (d / INDEX).write_text(json.dumps(index))
        return "metadata"

    return mutate


INDEX_MUTATIONS = {
    "traversal": index_entry("../../../../etc/passwd", "names '../../../../etc/passwd'"),
    "traversal to a shard": index_entry("../m/../../x.safetensors", "not a .safetensors file in"),
    "absolute": index_entry("/etc/x.safetensors", "not a .safetensors file in"),
    "link out of the folder": index_entry("sub/x.safetensors", "lies outside", prepare=_link_out),
    "metadata a list": index_metadata([1]),
    "total_size a string": index_metadata({"total_size": "many"}),
    "weight_map a list": index_is('{"weight_map": ["a"]}', "no weight_map"),
    "index not JSON": index_is("{", "not valid JSON"),
}


def config_edit(edit: Callable[[dict], object], message: str) -> Callable[[Path], str]:
    def mutate(d: Path) -> str:
        path = d / "config.json"
        config = json.loads(path.read_text())
        config = edit(config) or config
        path.write_text(json.dumps(config))
        return message

    return mutate


def _text(key: str, value: object) -> Callable[[dict], None]:
    def edit(c: dict) -> None:
        c["text_config"][key] = value

    return edit


def _no_layer_types_interval_0(c: dict) -> None:
    c["text_config"].pop("layer_types", None)
    c["text_config"]["full_attention_interval"] = 0


CONFIG_MUTATIONS = {
    "text_config a list": config_edit(lambda c: c.update(text_config=[1, 2]), "text_config is list"),
    "text_config a string": config_edit(lambda c: c.update(text_config="abc"), "text_config is str"),
    "vision_config a number": config_edit(lambda c: c.update(vision_config=5), "vision_config is int"),
    "architectures a string": config_edit(lambda c: c.update(architectures="Qwen3_5"), "architectures"),
    "config a list": config_edit(lambda c: [c], "not a JSON object"),
    "layers 2**31": config_edit(_text("num_hidden_layers", 2**31), "num_hidden_layers"),
    "layers -1": config_edit(_text("num_hidden_layers", -1), "num_hidden_layers"),
    "heads 0": config_edit(_text("num_attention_heads", 0), "n_head"),
    "hidden_size a string": config_edit(_text("hidden_size", "wide"), "bad text_config field"),
    "layer interval 0": config_edit(_no_layer_types_interval_0, "bad text_config field"),
    "config a folder": lambda d: (d / "config.json").unlink() or (d / "config.json").mkdir() or "is a folder",
}

MUTATIONS = {
    **{f"header: {k}": v for k, v in HEADER_MUTATIONS.items()},
    **{f"index: {k}": v for k, v in INDEX_MUTATIONS.items()},
    **{f"config: {k}": v for k, v in CONFIG_MUTATIONS.items()},
}


def _convert(d: Path) -> object:
    return convert(d, d.parent / "out.gguf")


OPENERS: dict[str, Callable[[Path], object]] = {
    "convert": _convert,
    "mtp check": check_hf,
    "mtp restore --hf (head source)": open_hf_head,
    "export vllm": lambda d: export_engine(VLLM, d, d.parent / "serve"),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_every_opener_refuses_with_one_message_naming_the_file(name: str, folder: Path) -> None:
    message = MUTATIONS[name](folder)
    for opener, open_ in OPENERS.items():
        with pytest.raises(QwythosError) as e:
            open_(folder)
        text = str(e.value)
        assert message in text, (opener, text)
        assert str(folder) in e.value.message and e.value.hint, (opener, text)
    assert not (folder.parent / "out.gguf").exists() and not (folder.parent / "serve").exists()


def test_a_link_out_of_the_folder_is_refused_without_opening_it(folder: Path, monkeypatch) -> None:
    """The traversal path is refused by its name: nothing outside the folder is opened."""
    import builtins

    INDEX_MUTATIONS["traversal"](folder)
    opened: list[str] = []
    real_open = builtins.open

    def spy(file, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        opened.append(str(file))
        return real_open(file, *a, **kw)

    monkeypatch.setattr(builtins, "open", spy)
    for open_ in (open_checkpoint, check_hf, open_hf_head):
        with pytest.raises(QwythosError, match="outside|not a .safetensors"):
            open_(folder)
    assert opened and all(str(folder) in p for p in opened), opened


def test_a_shard_linked_from_elsewhere_is_still_read(folder: Path, tmp_path: Path) -> None:
    """Hugging Face's cache and `mtp restore --hf` link shards to files outside the folder: a link
    that is the shard itself is followed (only folders on the way may not lead out)."""
    shard = mtp_shard(folder)
    blob = tmp_path / "blobs" / "abc123"
    blob.parent.mkdir()
    shutil.move(shard, blob)
    shard.symlink_to(blob)
    rep = check_hf(folder)
    assert rep.mtp_found == 15 and not [i for i in rep.issues if shard.name in i.where + i.problem]
    assert open_checkpoint(folder).tensors["mtp.fc.weight"].file == shard


def test_missing_head_shard_is_one_issue_not_every_tensor(folder: Path) -> None:
    """A missing shard is named once: its tensors are not listed one by one, and the promise check
    does not advise restoring a head the index says is there."""
    mtp_shard(folder).unlink()
    rep = check_hf(folder)
    assert not rep.ok
    assert [i.where for i in rep.issues if i.severity == "error"] == [mtp_shard(folder).name]


# ---- the CLI: a representative set, in a subprocess ---------------------------------------------

CLI_CASES = [
    "header: length 2**63",
    "header: offsets aliasing",
    "index: traversal",
    "config: text_config a list",
]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-m", "qwythos.cli", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def _assert_one_message(res: subprocess.CompletedProcess, message: str) -> None:
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "Traceback" not in out, out
    assert out.count("error:") == 1 and message in " ".join(out.split()), out


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_exits_1_with_one_message(
    name: str, folder: Path, tiny_qwythos_dir: Path, tmp_path: Path
) -> None:
    message = MUTATIONS[name](folder)
    commands = {
        "convert": ["convert", str(folder), "-o", str(tmp_path / "o.gguf")],
        "mtp check": ["mtp", "check", str(folder)],
        "mtp restore --hf": [
            "mtp",
            "restore",
            str(tiny_qwythos_dir),
            "--from",
            str(folder),
            "--hf",
            str(tmp_path / "r"),
        ],
    }
    for cmd in commands.values():
        _assert_one_message(_cli(*cmd), message)
    assert not (tmp_path / "o.gguf").exists() and not (tmp_path / "r").exists()


def test_cli_fifo_shard_does_not_block(folder: Path) -> None:
    """A shard that is a FIFO is refused before it is opened (opening one would wait forever)."""
    shard = mtp_shard(folder)
    shard.unlink()
    os.mkfifo(shard)
    _assert_one_message(_cli("mtp", "check", str(folder)), "not a regular file")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["vision_config"].update(depth=2**31), "vision_config depth"),
        (lambda c: c["vision_config"].update(patch_size=0), "vision_config patch_size"),
        (lambda c: c["vision_config"].update(hidden_size=[1]), "bad field"),
    ],
)
def test_vision_config_edge_values_are_refused_before_sizing(folder: Path, edit, message: str) -> None:
    """`convert --mmproj` sizes the projector from vision_config: 2**31 blocks are refused, not built."""
    from qwythos.convert import mmproj

    config_edit(edit, message)(folder)
    with pytest.raises(QwythosError, match=message) as e:
        mmproj.preflight(folder)
    assert str(folder / "config.json") in e.value.message


def test_processor_config_of_the_wrong_type(folder: Path) -> None:
    from qwythos.convert import mmproj

    (folder / "preprocessor_config.json").write_text('{"media_proc_cfg": [1]}')
    with pytest.raises(QwythosError, match="not a JSON object of processor settings"):
        mmproj.read_preprocessor(folder)
    (folder / "preprocessor_config.json").write_text("[" * 100_000)
    with pytest.raises(QwythosError, match="nested too deeply"):
        mmproj.read_preprocessor(folder)
