"""`qwythos export sglang DIR`: per-node `sglang.launch_server` commands and a README.

One tensor-parallel group spans every GPU of every node (`--tp-size` = GPUs x nodes); across nodes
SGLang's own launcher joins them (`--nnodes/--node-rank/--dist-init-addr`, the same command on
every node). MTP drafting is `--speculative-algorithm NEXTN`, which runs the checkpoint's one
`mtp.*` layer (python/sglang/srt/models/qwen3_5_mtp.py) as a chain of `--speculative-num-steps`
drafts with top-k 1. SGLang uses exactly one MTP layer: a config promising another number is
refused. Without the weights SGLang loads silently and rejects every draft (accept length 1.0).
"""

from __future__ import annotations

from qwythos.core.errors import QwythosError
from qwythos.export import engines

#: The engine release whose argument definitions the generated flags were checked against (see
#: tests/test_export_engines.py for the pinned definitions).
SGLANG_VERSION = "sglang >= 0.5.10 (Qwen3.5 MTP: qwen3_5_mtp.py; NEXTN speculative algorithm)"


def sglang_argv(node: engines.NodeSettings) -> list[str]:
    """The `python -m sglang.launch_server` command line of one node."""
    argv = [
        "python",
        "-m",
        "sglang.launch_server",
        "--model-path",
        str(node.model_dir),
        "--served-model-name",
        node.name,
    ]
    argv += ["--tp-size", str(node.tp), "--context-length", str(node.ctx)]
    if node.draft:
        argv += ["--speculative-algorithm", "NEXTN", "--speculative-num-steps", str(node.draft)]
        argv += ["--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", str(node.draft + 1)]
    argv += ["--reasoning-parser", engines.REASONING_PARSER, "--tool-call-parser", engines.TOOL_PARSER]
    if node.nodes > 1:
        dist_init_addr = f"{node.master_addr}:{node.master_port}"
        argv += [
            "--nnodes",
            str(node.nodes),
            "--node-rank",
            str(node.rank),
            "--dist-init-addr",
            dist_init_addr,
        ]
    argv += ["--host", node.host, "--port", str(node.port)]
    return argv


def check_one_mtp_layer(facts: engines.ModelFacts) -> None:
    """SGLang's Qwen3.5 NEXTN drafter builds exactly one MTP layer: refuse a folder promising more."""
    if facts.has_head and facts.cfg.mtp_layers != 1:
        raise QwythosError(
            f"{facts.folder / 'config.json'} says mtp_num_hidden_layers {facts.cfg.mtp_layers}; "
            "SGLang's Qwen3.5 NEXTN runs exactly one MTP layer",
            f"rewrite the folder with `qwythos mtp restore ... --hf` (it sets 1), then check it with "
            f"`qwythos mtp check {facts.folder}`",
        )


def _notes(exp: engines.EngineExport, port: int) -> list[str]:
    """The README after the commands: several nodes, the check, the known traps."""
    several = [
        "Run the script of every node; they meet at `--dist-init-addr` (the head's address, a free",
        "port). Only rank 0 answers HTTP. For throughput rather than one larger context, run one",
        "independent server per node behind a load balancer instead.",
        "",
    ]
    return [
        *(several if exp.nodes > 1 else []),
        f"Check it: `curl http://HEAD:{port}/v1/models`; `GET /server_info` reports"
        " `avg_spec_accept_length` - about 1.0 means every draft is rejected (a missing or wrong head).",
        "",
        "## Known traps (written into the commands above)",
        "",
        "- **Exactly one MTP layer**: SGLang's Qwen3.5 NEXTN drafter builds one layer; config.json must"
        " say `mtp_num_hidden_layers: 1` (`qwythos mtp restore --hf` writes it).",
        "- **A missing head is silent in SGLang**: it loads the Qwythos release and every draft is"
        " rejected (sglang #35797). `qwythos mtp check DIR` before serving.",
        "- **YaRN lives in config.json**, for the draft layer as well as the target: past the native window"
        f" it is written into an overlay folder (`{engines.OVERLAY}/` here) that links the input's other"
        " files, never into the input" + (f" ({exp.config_changes[0]})." if exp.config_changes else "."),
        "- Only tensor parallelism is used; pipeline parallelism is not needed for a 9B model.",
    ]


def _drafting(n: int) -> str:
    return f"NEXTN, {n} step(s), top-k 1, {n + 1} draft tokens"


#: As VLLM's row, with SGLang's own refusal (exactly one MTP layer) last.
SGLANG = engines.Engine(
    "sglang", "SGLang", SGLANG_VERSION, 30000, 25000, sglang_argv, _drafting, _notes, check_one_mtp_layer
)
