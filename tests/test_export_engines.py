"""qwythos export vllm|sglang: per-node launch commands checked against the engines' argument
definitions (pinned below, per version), YaRN in an overlay's config.json (the input never modified),
the known traps, the refusals."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shlex
import shutil

import pytest
from typer.testing import CliRunner

from qwythos.cli import app
from qwythos.core.drafting.lengths import DEFAULT_DRAFT
from qwythos.core.errors import QwythosError
from qwythos.core.model import qwen35
from qwythos.export.engines import OVERLAY, check_tp, export_engine, tp_fits, write_overlay
from qwythos.export.sglang import SGLANG
from qwythos.export.vllm import VLLM
from qwythos.mtp.hf_out import restore_hf
from qwythos.testing.tiny import write_checkpoint

NINE_B_CONFIG = __import__("pathlib").Path(__file__).resolve().parents[1] / "data" / "qwythos-9b-config.json"


class Strict(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so a wrong flag fails the test with its message."""

    def error(self, message):  # noqa: ANN001, ANN201
        raise ValueError(message)


# ---- vLLM's arguments, pinned ---------------------------------------------------------------------
# vllm-project/vllm vllm/engine/arg_utils.py at 99d7eb5d6a512cfcc5a2b104f24ebf2d6cda772b (ModelConfig,
# ParallelConfig, CacheConfig and VllmConfig groups): --served-model-name (nargs +), --max-model-len,
# --tensor-parallel-size/-tp, --pipeline-parallel-size/-pp, --enable-prefix-caching (BooleanOptional),
# --reasoning-parser, --speculative-config (json.loads). The Qwen3.5-era arg_utils (vLLM >= 0.17, the one
# that ships qwen3_5_mtp.py at 01d99805d1ef3d21d30e21a0ae387643fe0cd45a) adds CacheConfig.mamba_cache_mode
# ("none" | "all" | "align") as --mamba-cache-mode and ParallelConfig's --nnodes/-n, --node-rank/-r,
# --master-addr, --master-port. The serve front end (entrypoints/openai/cli_args.py, cli/serve.py) adds
# the positional model, --host, --port, --enable-auto-tool-choice, --tool-call-parser, --headless.
VLLM_TOOL_PARSERS = ("hermes", "qwen3_coder", "qwen3_xml", "pythonic")
VLLM_REASONING_PARSERS = ("deepseek_r1", "qwen3")


def vllm_parser() -> argparse.ArgumentParser:
    p = Strict(prog="vllm serve")
    p.add_argument("model_tag")
    p.add_argument("--served-model-name", nargs="+")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--speculative-config", type=json.loads)
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction)
    p.add_argument("--mamba-cache-mode", choices=("none", "all", "align"), default="none")
    p.add_argument("--reasoning-parser", choices=VLLM_REASONING_PARSERS)
    p.add_argument("--enable-auto-tool-choice", action="store_true")
    p.add_argument("--tool-call-parser", choices=VLLM_TOOL_PARSERS)
    p.add_argument("--nnodes", "-n", type=int, default=1)
    p.add_argument("--node-rank", "-r", type=int, default=0)
    p.add_argument("--master-addr", default="127.0.0.1")
    p.add_argument("--master-port", type=int, default=29501)
    p.add_argument("--headless", action="store_true")
    p.add_argument("--host")
    p.add_argument("--port", type=int, default=8000)
    return p


# ---- SGLang's arguments, pinned -------------------------------------------------------------------
# sgl-project/sglang python/sglang/srt/server_args.py at 001067fffe33427bee0ed2f007fb7551a1d76b44: flags
# are derived from the ServerArgs fields (tp_size -> --tp-size): model_path (alias --model), served_model_name,
# tp_size (alias --tensor-parallel-size), context_length, nnodes, node_rank, dist_init_addr (alias
# --nccl-init-addr), host, port, reasoning_parser, tool_call_parser, speculative_algorithm (builtins EAGLE,
# EAGLE3, NEXTN, STANDALONE, NGRAM, DFLASH, DSPARK), speculative_num_steps, speculative_eagle_topk,
# speculative_num_draft_tokens. launch_server is `python -m sglang.launch_server`.
SGLANG_ALGORITHMS = ("EAGLE", "EAGLE3", "NEXTN", "STANDALONE", "NGRAM", "DFLASH", "DSPARK")


def sglang_parser() -> argparse.ArgumentParser:
    p = Strict(prog="python -m sglang.launch_server")
    p.add_argument("--model-path", "--model", required=True)
    p.add_argument("--served-model-name")
    p.add_argument("--tp-size", "--tensor-parallel-size", type=int, default=1)
    p.add_argument("--pp-size", "--pipeline-parallel-size", type=int, default=1)
    p.add_argument("--context-length", type=int)
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--dist-init-addr", "--nccl-init-addr")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--reasoning-parser")
    p.add_argument("--tool-call-parser")
    p.add_argument("--speculative-algorithm", choices=SGLANG_ALGORITHMS)
    p.add_argument("--speculative-num-steps", type=int)
    p.add_argument("--speculative-eagle-topk", type=int)
    p.add_argument("--speculative-num-draft-tokens", type=int)
    return p


def _real_vllm_parse(argv):
    """The installed vLLM's own parser (only where vLLM is installed)."""
    try:
        from vllm.entrypoints.openai.cli_args import make_arg_parser
    except ImportError:
        return None
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:
        from vllm.utils import FlexibleArgumentParser
    parser = make_arg_parser(FlexibleArgumentParser())
    rest = [a for a in argv[3:] if a != "--headless"]  # --headless belongs to the serve subcommand
    return parser.parse_args(["--model", argv[2], *rest])


def _real_sglang_parse(argv):
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    return parser.parse_args(argv[3:])


# ---- folders ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tiny_qwythos_dir, tiny_mtp_dir, tmp_path_factory):
    """A tiny folder with its head restored (the input `export vllm|sglang` expects), copied."""
    return restore_hf(
        tiny_qwythos_dir, tiny_mtp_dir, tmp_path_factory.mktemp("served") / "m", copy=True
    ).output


@pytest.fixture
def served_copy(served, tmp_path):
    return shutil.copytree(served, tmp_path / "m")


def nine_b_folder(tmp_path, *, yarn: bool = True, mtp_layers: int = 1):
    """The real Qwythos-9B config.json over token-sized stand-in tensors with the real names (only the
    headers are read by the exports), with the 15 mtp.* names."""
    config = json.loads(NINE_B_CONFIG.read_text())
    text = config["text_config"]
    text["mtp_num_hidden_layers"] = mtp_layers
    if not yarn:  # the base Qwen3.5-9B: native 262144, no YaRN
        text["rope_parameters"] = {
            k: v
            for k, v in text["rope_parameters"].items()
            if k not in ("factor", "original_max_position_embeddings")
        }
        text["rope_parameters"]["rope_type"] = "default"
        text["max_position_embeddings"] = 262144
    names = ["model.language_model.embed_tokens.weight", "lm_head.weight"] + [
        f"mtp.layers.0.{n}" if not n.startswith("mtp.") else n
        for n in [*qwen35.MTP_RULES, "self_attn.q_proj.weight", "mlp.up_proj.weight"]
    ]
    return write_checkpoint(tmp_path / "nine-b", config, {n: [[0.0]] for n in names}, with_tokenizer=False)


# ---- tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("nodes", [1, 2])
def test_vllm_commands_parse_with_the_pinned_definitions(served_copy, tmp_path, nodes):
    r = export_engine(
        VLLM,
        served_copy,
        tmp_path / "out",
        gpus=1 if nodes == 2 else 2,
        nodes=nodes,
        master_addr="10.0.0.1",
        draft=3,
    )
    assert r.tensor_parallel == 2 and len(r.launches) == nodes
    parsed = [vllm_parser().parse_args(n.argv[2:]) for n in r.launches]
    for rank, (n, a) in enumerate(zip(r.launches, parsed, strict=True)):
        assert n.argv[:2] == ["vllm", "serve"] and a.model_tag == str(served_copy.resolve())
        assert a.tensor_parallel_size == 2 and a.pipeline_parallel_size == 1  # never PP with MTP
        assert a.speculative_config == {"method": "mtp", "num_speculative_tokens": 3}
        assert a.enable_prefix_caching and a.mamba_cache_mode == "align"
        assert (
            a.reasoning_parser == "qwen3"
            and a.enable_auto_tool_choice
            and a.tool_call_parser == "qwen3_coder"
        )
        assert a.max_model_len == 16384  # the tiny config's YaRN reach (4 x 4096), below the 32768 default
        assert a.nnodes == nodes and a.node_rank == rank
        assert a.headless == (rank > 0) and (a.host is not None) == (rank == 0)
        if nodes > 1:
            assert a.master_addr == "10.0.0.1"
        # the script runs exactly this command line
        script = (tmp_path / "out" / f"node{rank}.sh").read_text()
        assert shlex.split(script.split("exec ", 1)[1].replace("\\\n", " ")) == n.argv
        if importlib.util.find_spec("vllm") is not None:  # the engine's own parser, where installed
            _real_vllm_parse(n.argv)
    assert json.loads((tmp_path / "out" / "launch.json").read_text())[0]["argv"] == r.launches[0].argv
    readme = (tmp_path / "out" / "README.md").read_text()
    for trap in ("#49355", "#52069", "--mamba-cache-mode align", "--hf-overrides", "mtp_num_hidden_layers"):
        assert trap in readme


@pytest.mark.parametrize("nodes", [1, 2])
def test_sglang_commands_parse_with_the_pinned_definitions(served_copy, tmp_path, nodes):
    r = export_engine(
        SGLANG, served_copy, tmp_path / "out", gpus=2 // nodes, nodes=nodes, master_addr="10.0.0.1", draft=3
    )
    parsed = [sglang_parser().parse_args(n.argv[3:]) for n in r.launches]
    for rank, (n, a) in enumerate(zip(r.launches, parsed, strict=True)):
        assert n.argv[:3] == ["python", "-m", "sglang.launch_server"]
        assert a.model_path == str(served_copy.resolve()) and a.tp_size == 2 and a.pp_size == 1
        assert (a.speculative_algorithm, a.speculative_num_steps, a.speculative_eagle_topk) == ("NEXTN", 3, 1)
        assert a.speculative_num_draft_tokens == 4
        assert a.nnodes == nodes and a.node_rank == rank
        assert (a.dist_init_addr == "10.0.0.1:25000") == (nodes > 1)
        if importlib.util.find_spec("sglang") is not None:
            _real_sglang_parse(n.argv)
    if nodes == 2:  # the same command on every node but the rank
        a0, a1 = (list(x.argv) for x in r.launches)
        i = a0.index("--node-rank")
        assert a0[:i] + a0[i + 2 :] == a1[:i] + a1[i + 2 :]
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "Exactly one MTP layer" in readme and "#35797" in readme


def test_drafting_off_and_from_bench(served_copy, tmp_path):
    r = export_engine(VLLM, served_copy, tmp_path / "default")
    assert (r.draft, r.draft_source) == (DEFAULT_DRAFT, "default")  # the length every export writes
    r = export_engine(VLLM, served_copy, tmp_path / "off", draft=0)
    assert "--speculative-config" not in r.launches[0].argv and r.draft_source == "off"
    assert (
        "--speculative-algorithm"
        not in export_engine(SGLANG, served_copy, tmp_path / "s-off", draft=0).launches[0].argv
    )
    from qwythos.core.drafting import costs as draft_costs

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(QwythosError, match="qwythos bench"):
        export_engine(VLLM, served_copy, tmp_path / "b", bench_gguf=gguf)
    draft_costs.store(gguf, 2, draft_costs.DraftCosts([0.01, 0.012], 0.002, [0.7, 0.5]), recommended=3)
    r = export_engine(VLLM, served_copy, tmp_path / "b", bench_gguf=gguf)
    assert (r.draft, r.draft_source) == (3, "bench")
    assert vllm_parser().parse_args(r.launches[0].argv[2:]).speculative_config["num_speculative_tokens"] == 3


def _hashes(folder):
    """sha256 of every file under `folder` (links followed), and every entry's kind: the input's
    state, compared byte for byte before and after an export."""
    out = {}
    for p in sorted(folder.rglob("*")):
        kind = "link" if p.is_symlink() else "dir" if p.is_dir() else "file"
        data = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        out[str(p.relative_to(folder))] = (kind, data, p.stat().st_mtime_ns if p.is_file() else None)
    return out


@pytest.mark.parametrize("engine", [VLLM, SGLANG])
def test_yarn_for_1m_goes_into_an_overlay_and_the_input_is_unchanged(tmp_path, engine):
    """The base config (native 262144, no YaRN) served at 1M: the served config.json gets YaRN factor
    4 (vLLM would apply --hf-overrides to the target but not to the MTP draft layer), in an overlay
    folder beside the launch files that links the input's other files; the input stays byte-identical."""
    folder = nine_b_folder(tmp_path, yarn=False)
    before = json.loads((folder / "config.json").read_text())
    state = _hashes(folder)
    out = tmp_path / "o"
    r = export_engine(engine, folder, out, gpus=8, ctx=1048576, write_config=False)
    assert r.config_changes and r.warnings and r.overlay is None and not (out / OVERLAY).exists()
    assert r.model_dir == folder.resolve()
    with pytest.raises(QwythosError, match="already exists"):  # refused before anything is written
        export_engine(engine, folder, out, gpus=8, ctx=1048576)
    assert not (out / OVERLAY).exists()
    for _ in range(2):  # a second export with --force updates the overlay in place
        r = export_engine(engine, folder, out, gpus=8, ctx=1048576, force=True)
        assert _hashes(folder) == state  # the input: every file byte-identical, nothing added
        overlay = out / OVERLAY
        assert r.overlay == overlay.resolve() == r.model_dir and r.source_dir == folder.resolve()
        after = json.loads((overlay / "config.json").read_text())
        assert not (overlay / "config.json").is_symlink()
        rope = after["text_config"]["rope_parameters"]
        assert (rope["rope_type"], rope["factor"], rope["original_max_position_embeddings"]) == (
            "yarn",
            4.0,
            262144,
        )
        assert after["text_config"]["max_position_embeddings"] == 1048576
        assert rope["mrope_section"] == before["text_config"]["rope_parameters"]["mrope_section"]
        assert {k: v for k, v in after.items() if k != "text_config"} == {
            k: v for k, v in before.items() if k != "text_config"
        }
        # every other file of the input is linked, nothing else is there
        others = sorted(p.name for p in folder.iterdir() if p.name != "config.json")
        assert sorted(p.name for p in overlay.iterdir() if p.name != "config.json") == others
        for name in others:
            assert (overlay / name).is_symlink() and (overlay / name).resolve() == (folder / name).resolve()
            assert (overlay / name).read_bytes() == (folder / name).read_bytes()
        # the commands serve the overlay
        if engine is VLLM:
            a = vllm_parser().parse_args(r.launches[0].argv[2:])
            assert a.model_tag == str(overlay.resolve()) and a.max_model_len == 1048576
            assert a.tensor_parallel_size == 8
        else:
            a = sglang_parser().parse_args(r.launches[0].argv[3:])
            assert a.model_path == str(overlay.resolve()) and a.context_length == 1048576
        readme = (out / "README.md").read_text()
        assert "YaRN factor 4" in readme and "overlay" in readme and str(folder.resolve()) in readme
    # the overlay cannot be the input folder itself
    with pytest.raises(QwythosError, match="input folder itself"):
        write_overlay(folder, folder, after)
    assert _hashes(folder) == state
    # the Qwythos config already reaches 1M: nothing to write, the input served as is
    q = nine_b_folder(tmp_path / "q")
    r = export_engine(engine, q, tmp_path / "s", gpus=4, nodes=2, master_addr="h", ctx=1048576)
    assert r.config_changes == [] and r.overlay is None and r.model_dir == q.resolve()
    assert not (tmp_path / "s" / OVERLAY).exists()


def test_overlay_in_the_default_output_folder_leaves_the_input_files_alone(tmp_path):
    """The default output folder lies beside the input (DIR-serve-<engine>): the input folder gains
    nothing, and the overlay links its files."""
    folder = nine_b_folder(tmp_path, yarn=False)
    state = _hashes(folder)
    r = export_engine(VLLM, folder, gpus=8, ctx=1048576)
    out = folder.parent / f"{folder.name}-serve-vllm"
    assert r.out_dir == out and r.model_dir == (out / OVERLAY).resolve()
    assert _hashes(folder) == state  # not one file added, changed or removed
    assert (out / OVERLAY / "config.json").is_file() and (out / "node0.sh").is_file()


def test_tensor_parallel_sizes_of_the_9b_model(tmp_path):
    cfg = qwen35.text_config_from(json.loads(NINE_B_CONFIG.read_text()))
    assert [tp for tp in range(1, 33) if tp_fits(cfg, tp)] == [1, 2, 4, 8, 16]
    with pytest.raises(QwythosError, match="tensor parallel size 6") as e:
        check_tp(cfg, 6)
    assert "1, 2, 4, 8, 16" in str(e.value)
    r = export_engine(VLLM, nine_b_folder(tmp_path), tmp_path / "o", gpus=8, nodes=2, master_addr="10.1.1.1")
    assert r.tensor_parallel == 16 and [n.rank for n in r.launches] == [0, 1]


def test_refusals(tiny_qwythos_dir, served_copy, tmp_path):
    with pytest.raises(QwythosError, match="no mtp.* tensors") as e:
        export_engine(VLLM, tiny_qwythos_dir, tmp_path / "a")
    assert "qwythos mtp restore" in e.value.hint
    with pytest.raises(QwythosError, match="--master-addr"):
        export_engine(SGLANG, served_copy, tmp_path / "b", nodes=2)
    with pytest.raises(QwythosError, match="--draft 9"):
        export_engine(VLLM, served_copy, tmp_path / "c", draft=9)
    with pytest.raises(QwythosError, match="exactly one MTP layer"):
        export_engine(SGLANG, nine_b_folder(tmp_path, mtp_layers=2), tmp_path / "d")
    assert not any((tmp_path / x).exists() for x in "abcd")
    export_engine(VLLM, served_copy, tmp_path / "e")
    with pytest.raises(QwythosError, match="already exists"):
        export_engine(VLLM, served_copy, tmp_path / "e")
    export_engine(VLLM, served_copy, tmp_path / "e", force=True)


def test_cli(served_copy, tmp_path):
    res = CliRunner().invoke(
        app, ["export", "vllm", str(served_copy), "-o", str(tmp_path / "v"), "--gpus", "2", "--json"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["tensor_parallel"] == 2 and data["launches"][0]["argv"][:2] == ["vllm", "serve"]
    res = CliRunner().invoke(
        app, ["export", "sglang", str(served_copy), "-o", str(tmp_path / "s"), "--gpus", "3"]
    )
    assert res.exit_code == 1 and "tensor parallel size 3" in " ".join(res.output.split())
