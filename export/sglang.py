"""`qwythos export sglang DIR`: per-node `sglang.launch_server` commands and a README.

One tensor-parallel group spans every GPU of every node (`--tp-size` = GPUs x nodes); across nodes
SGLang's own launcher joins them (`--nnodes/--node-rank/--dist-init-addr`, the same command on
every node). MTP drafting is `--speculative-algorithm NEXTN`, which runs the checkpoint's one
`mtp.*` layer (python/sglang/srt/models/qwen3_5_mtp.py) as a chain of `--speculative-num-steps`
drafts with top-k 1. SGLang uses exactly one MTP layer: a config promising another number is
refused. Without the weights SGLang loads silently and rejects every draft (accept length 1.0).
"""

from __future__ import annotations

from pathlib import Path

from qwythos.core.errors import QwythosError
from qwythos.export.engines import (
    EngineExport,
    ModelFacts,
    NodeLaunch,
    check_outputs,
    choose_draft,
    ensure_context,
    plan_topology,
    read_model,
    topology_rows,
    write_launches,
)

#: The engine release whose argument definitions the generated flags were checked against (see
#: tests/test_export_engines.py for the pinned definitions).
SGLANG_VERSION = "sglang >= 0.5.10 (Qwen3.5 MTP: qwen3_5_mtp.py; NEXTN speculative algorithm)"
TOOL_PARSER = "qwen3_coder"
REASONING_PARSER = "qwen3"


def sglang_argv(
    model_dir: Path,
    *,
    tp: int,
    ctx: int,
    draft: int,
    name: str,
    host: str,
    port: int,
    nodes: int = 1,
    rank: int = 0,
    dist_init_addr: str | None = None,
) -> list[str]:
    """The `python -m sglang.launch_server` command line of one node."""
    argv = [
        "python",
        "-m",
        "sglang.launch_server",
        "--model-path",
        str(model_dir),
        "--served-model-name",
        name,
    ]
    argv += ["--tp-size", str(tp), "--context-length", str(ctx)]
    if draft:
        argv += ["--speculative-algorithm", "NEXTN", "--speculative-num-steps", str(draft)]
        argv += ["--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", str(draft + 1)]
    argv += ["--reasoning-parser", REASONING_PARSER, "--tool-call-parser", TOOL_PARSER]
    if nodes > 1:
        argv += ["--nnodes", str(nodes), "--node-rank", str(rank), "--dist-init-addr", str(dist_init_addr)]
    argv += ["--host", host, "--port", str(port)]
    return argv


def export_sglang(
    folder: str | Path,
    out: str | Path | None = None,
    *,
    gpus: int = 1,
    nodes: int = 1,
    ctx: int | None = None,
    draft: int | None = None,
    bench_gguf: str | Path | None = None,
    name: str = "qwythos-9b",
    host: str = "0.0.0.0",
    port: int = 30000,
    master_addr: str | None = None,
    master_port: int = 25000,
    write_config: bool = True,
    force: bool = False,
) -> EngineExport:
    """Write node<R>.sh, launch.json and README.md for serving `folder` with SGLang."""
    facts = read_model(folder)
    if facts.has_head and facts.cfg.mtp_layers != 1:
        raise QwythosError(
            f"{facts.folder / 'config.json'} says mtp_num_hidden_layers {facts.cfg.mtp_layers}; "
            "SGLang's Qwen3.5 NEXTN runs exactly one MTP layer",
            f"rewrite the folder with `qwythos mtp restore ... --hf` (it sets 1), then check it with "
            f"`qwythos mtp check {facts.folder}`",
        )
    tp, nodes_, ctx_ = plan_topology(facts, gpus, nodes, ctx, master_addr)
    d, how = choose_draft(draft, Path(bench_gguf) if bench_gguf else None, facts.has_head)
    out_dir = Path(out) if out else facts.folder.resolve() / "serve-sglang"
    check_outputs(out_dir, nodes_, force)  # before config.json is touched
    changes = ensure_context(facts, ctx_, write=write_config)
    model_dir = facts.folder.resolve()
    addr = f"{master_addr}:{master_port}" if nodes_ > 1 else None
    launches = [
        NodeLaunch(
            r,
            sglang_argv(
                model_dir,
                tp=tp,
                ctx=ctx_,
                draft=d,
                name=name,
                host=host,
                port=port,
                nodes=nodes_,
                rank=r,
                dist_init_addr=addr,
            ),
        )
        for r in range(nodes_)
    ]
    exp = EngineExport(
        "sglang",
        SGLANG_VERSION,
        model_dir,
        out_dir,
        gpus,
        nodes_,
        tp,
        ctx_,
        d,
        how,
    )
    exp.launches, exp.config_changes = launches, changes
    if changes and not write_config:
        exp.warnings.append(f"{changes[0]} is needed but was not written (--no-write-config)")
    if not facts.has_head:
        exp.warnings.append("the folder has no mtp.* tensors: drafting is off")
    exp.readme = write_launches(exp.out_dir, launches, _readme(exp, facts, host, port), force)
    return exp


def _readme(exp: EngineExport, facts: ModelFacts, host: str, port: int) -> str:
    lines = [
        f"# Serving {facts.folder.name} with SGLang",
        "",
        f"Checked against: {exp.engine_version}. Generated by `qwythos export sglang`.",
        "",
        f"- tensor parallel {exp.tensor_parallel} = {exp.gpus_per_node} GPU(s) x {exp.nodes} node(s)",
        f"- context {exp.ctx} tokens"
        + (f" (YaRN in config.json reaches {facts.yarn_ctx})" if facts.yarn_ctx else ""),
        (
            f"- MTP drafting: NEXTN, {exp.draft} step(s), top-k 1, {exp.draft + 1} draft tokens ({exp.draft_source})"
            if exp.draft
            else "- MTP drafting: off"
        ),
        "",
        *topology_rows(exp.gpus_per_node, exp.nodes, host, port),
        "",
        "## Start",
        "",
        f"The model folder must exist at `{exp.model_dir}` on every node (same path).",
        "",
    ]
    for n in exp.launches:
        lines += [f"Node rank {n.rank}: `bash node{n.rank}.sh`", "", "```bash", n.command, "```", ""]
    if exp.nodes > 1:
        lines += [
            "Run the script of every node; they meet at `--dist-init-addr` (the head's address, a free",
            "port). Only rank 0 answers HTTP. For throughput rather than one larger context, run one",
            "independent server per node behind a load balancer instead.",
            "",
        ]
    lines += [
        f"Check it: `curl http://HEAD:{port}/v1/models`; `GET /server_info` reports"
        " `avg_spec_accept_length` - about 1.0 means every draft is rejected (a missing or wrong head).",
        "",
        "## Known traps (written into the commands above)",
        "",
        "- **Exactly one MTP layer**: SGLang's Qwen3.5 NEXTN drafter builds one layer; config.json must"
        " say `mtp_num_hidden_layers: 1` (`qwythos mtp restore --hf` writes it).",
        "- **A missing head is silent in SGLang**: it loads the Qwythos release and every draft is"
        " rejected (sglang #35797). `qwythos mtp check DIR` before serving.",
        "- **YaRN lives in config.json**, for the draft layer as well as the target"
        + (f" ({exp.config_changes[0]})." if exp.config_changes else "."),
        "- Only tensor parallelism is used; pipeline parallelism is not needed for a 9B model.",
        "- Tool calls: `--tool-call-parser qwen3_coder`; reasoning split: `--reasoning-parser qwen3`.",
        "",
    ]
    return "\n".join(lines)
