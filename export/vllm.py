"""`qwythos export vllm DIR`: per-node `vllm serve` commands and a README for 1..N GPUs on 1..M nodes.

One tensor-parallel group spans every GPU of every node (TP = GPUs x nodes); across nodes vLLM's
own multiprocessing launcher joins them (`--nnodes/--node-rank/--master-addr`, `--headless` on
the workers). MTP drafting is `--speculative-config {"method": "mtp", ...}`, which runs the
checkpoint's `mtp.*` layer (vllm/model_executor/models/qwen3_5_mtp.py). Prefix caching of the
linear-attention state must use `--mamba-cache-mode align` with MTP ("all" is refused).
"""

from __future__ import annotations

import json

from qwythos.export import engines

#: The engine release whose argument parser the generated flags were checked against (see
#: tests/test_export_engines.py for the pinned definitions).
VLLM_VERSION = "vllm >= 0.17 (Qwen3.5 MTP: qwen3_5_mtp.py; --mamba-cache-mode, --nnodes)"


def vllm_argv(node: engines.NodeSettings) -> list[str]:
    """The `vllm serve` command line of one node."""
    argv = ["vllm", "serve", str(node.model_dir), "--served-model-name", node.name]
    argv += ["--tensor-parallel-size", str(node.tp), "--max-model-len", str(node.ctx)]
    if node.draft:
        spec = {"method": "mtp", "num_speculative_tokens": node.draft}
        argv += ["--speculative-config", json.dumps(spec, separators=(",", ":"))]
    argv += ["--enable-prefix-caching", "--mamba-cache-mode", "align"]
    argv += [
        "--reasoning-parser",
        engines.REASONING_PARSER,
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        engines.TOOL_PARSER,
    ]
    if node.nodes > 1:
        argv += ["--nnodes", str(node.nodes), "--node-rank", str(node.rank)]
        argv += ["--master-addr", str(node.master_addr), "--master-port", str(node.master_port)]
        if node.rank > 0:
            argv.append("--headless")
    if node.rank == 0:
        argv += ["--host", node.host, "--port", str(node.port)]
    return argv


def _notes(exp: engines.EngineExport, port: int) -> list[str]:
    """The README after the commands: several nodes, the check, the known traps."""
    several = [
        "Start the head (rank 0) and every worker; the workers run `--headless` and join the head's",
        "`--master-addr`. The nodes need a fast interconnect: every layer does a tensor-parallel",
        "all-reduce. For more throughput rather than one larger context, run one independent server",
        "per node behind a load balancer instead (each with `--gpus` of that node, no `--nodes`).",
        "",
    ]
    return [
        *(several if exp.nodes > 1 else []),
        f"Check it: `curl http://HEAD:{port}/v1/models`; with drafting on, vLLM logs `SpecDecoding metrics`"
        " with the mean acceptance length.",
        "",
        "## Known traps (written into the commands above)",
        "",
        "- **Pipeline parallelism + MTP is broken in vLLM** (vllm #49355, #52069): only tensor parallelism"
        " is used, within and across nodes. Do not add `--pipeline-parallel-size`.",
        "- **`--mamba-cache-mode align`**: with prefix caching on, the Qwen3.5 MTP model refuses the"
        " default `all` mode.",
        "- **YaRN lives in config.json**: vLLM applies `--hf-overrides` to the target model only, not to"
        " the MTP draft layer, so contexts past the native window are set in the file itself - in an"
        f" overlay folder (`{engines.OVERLAY}/` here) that links the input's other files, never in the input"
        + (f" ({exp.config_changes[0]})." if exp.config_changes else "."),
        "- **The head must be in the folder**: the Qwythos release promises `mtp_num_hidden_layers: 1`"
        f" without `mtp.*` weights, which vLLM refuses. `{engines.RESTORE_HINT}` writes them back;"
        " `qwythos mtp check NEW_DIR` verifies.",
    ]


def _drafting(n: int) -> str:
    return f"{n} speculative token(s)"


#: name, title, version, HTTP port, rendezvous port, command line, drafting in words, README notes.
VLLM = engines.Engine("vllm", "vLLM", VLLM_VERSION, 8000, 29501, vllm_argv, _drafting, _notes)
