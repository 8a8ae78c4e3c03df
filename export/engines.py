"""What vLLM and SGLang launch recipes share: the checkpoint's facts, the topology, YaRN in
config.json, writing the per-node scripts and README, and the one export function (`export_engine`)
that an engine's table row (`Engine`: its command line, README and defaults) parameterises.

The input folder is never modified: when a context needs YaRN that the folder's config.json lacks,
the adjusted config.json goes into an overlay folder beside the launch files (`OVERLAY`) that links
every other file of the input (weights, index, tokenizer), and the commands serve the overlay.

The engines serve the Hugging Face folder (the one `qwythos mtp restore --hf` writes): a Qwythos
folder without `mtp.*` tensors is refused here with that fix, because vLLM rejects it and SGLang
accepts no draft. Only tensor parallelism is used (within and across nodes): pipeline parallelism
and MTP do not work together in vLLM (#49355, #52069), and a 9B model never needs it.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwythos.core.drafting.lengths import DEFAULT_DRAFT, MAX_DRAFT
from qwythos.core.errors import QwythosError
from qwythos.core.fileio import ensure_writable_dir, temp_name, write_error, write_text_atomic
from qwythos.core.model import qwen35
from qwythos.core.model.checkpoint import open_checkpoint
from qwythos.core.model.release import BASE_MODEL_REPO, LOCAL_NAME, START_CONTEXT
from qwythos.export.settings import check_draft

#: Where the head node serves HTTP unless told (every interface).
DEFAULT_HOST = "0.0.0.0"
#: The parsers both engines name for Qwen3.5: tool calls in the qwen3_coder XML format, thinking split.
TOOL_PARSER = "qwen3_coder"
REASONING_PARSER = "qwen3"
#: The folder beside the launch files holding the adjusted config.json and links to the input's files.
OVERLAY = "model"
#: What the README and the warning say when the folder has no head.
RESTORE_HINT = f"qwythos mtp restore DIR --from {BASE_MODEL_REPO} --hf NEW_DIR"


@dataclass(frozen=True)
class NodeSettings:
    """What one node's command line is made from."""

    model_dir: Path
    tp: int
    ctx: int
    draft: int  # 0: MTP drafting off
    name: str  # --served-model-name
    host: str
    port: int
    nodes: int
    rank: int
    master_addr: str | None
    master_port: int


@dataclass
class NodeLaunch:
    rank: int
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    script: Path | None = None

    @property
    def command(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + shlex.join(self.argv)


@dataclass
class ModelFacts:
    folder: Path
    cfg: qwen35.TextConfig
    config: dict[str, Any]
    has_head: bool
    native_ctx: int  # positions without YaRN
    yarn_ctx: int | None  # positions the config's YaRN reaches (None: no YaRN)


@dataclass
class EngineExport:
    engine: str
    engine_version: str  # the engine release the flags were checked against
    model_dir: Path
    out_dir: Path
    gpus_per_node: int
    nodes: int
    tensor_parallel: int
    ctx: int
    draft: int  # 0: MTP drafting off
    draft_source: str  # "--draft", "bench", "default", "off"
    launches: list[NodeLaunch] = field(default_factory=list)
    readme: Path | None = None
    config_changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    source_dir: Path | None = None  # the input folder (model_dir is the overlay when one was written)
    overlay: Path | None = None  # the overlay folder written for YaRN (None: the input is served as is)


def read_model(folder: str | Path) -> ModelFacts:
    """config.json and the tensor names (headers only) of a HF folder an engine will serve."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise QwythosError(
            f"{folder} is not a folder", "pass the Hugging Face folder (from `qwythos mtp restore --hf`)"
        )
    ckpt = open_checkpoint(folder)
    cfg = qwen35.text_config_from(ckpt.config, where=str(folder / "config.json"))
    head = qwen35.mtp_layer_count(ckpt)
    rope = cfg.rope.get("full_attention", cfg.rope)
    yarn = rope.get("rope_type") == "yarn" and rope.get("factor")
    if yarn:
        orig = int(rope.get("original_max_position_embeddings") or cfg.n_ctx)
        return ModelFacts(folder, cfg, ckpt.config, head > 0, orig, int(orig * float(rope["factor"])))
    return ModelFacts(folder, cfg, ckpt.config, head > 0, cfg.n_ctx, None)


def tp_fits(cfg: qwen35.TextConfig, tp: int) -> bool:
    """Whether `tp` GPUs split every head group evenly (KV heads may be replicated)."""
    heads = (cfg.n_head, cfg.lin_k_heads, cfg.lin_v_heads)
    return all(n % tp == 0 for n in heads) and (cfg.n_head_kv % tp == 0 or tp % cfg.n_head_kv == 0)


def check_tp(cfg: qwen35.TextConfig, tp: int) -> None:
    """Tensor parallelism must split every head group evenly (KV heads may be replicated)."""
    bad = [
        what
        for what, n in (
            ("attention heads", cfg.n_head),
            ("linear-attention key heads", cfg.lin_k_heads),
            ("linear-attention value heads", cfg.lin_v_heads),
        )
        if n % tp
    ]
    if cfg.n_head_kv % tp and tp % cfg.n_head_kv:
        bad.append("KV heads")
    if bad:
        ok = [d for d in range(1, cfg.n_head + 1) if tp_fits(cfg, d)]
        raise QwythosError(
            f"tensor parallel size {tp} does not divide the model's {', '.join(bad)} "
            f"({cfg.n_head} attention, {cfg.n_head_kv} KV, {cfg.lin_k_heads}/{cfg.lin_v_heads} linear heads)",
            f"use GPUs x nodes in {', '.join(map(str, ok))}",
        )


def choose_draft(draft: int | None, bench_gguf: Path | None, has_head: bool) -> tuple[int, str]:
    """The number of speculative tokens: --draft, else bench's recommendation, else the default."""
    if not has_head:
        return 0, "off"
    if draft is not None:
        return check_draft(draft), "--draft" if draft else "off"
    if bench_gguf is not None:
        from qwythos.core.drafting.costs import recommended_draft

        for threads in range(1, (os.cpu_count() or 1) + 1):
            rec = recommended_draft(bench_gguf, threads)
            if rec:
                return min(rec, MAX_DRAFT), "bench"
        raise QwythosError(
            f"`qwythos bench` has no measurement of {bench_gguf} on this machine",
            f"run `qwythos bench {bench_gguf}` first, or pass --draft N",
        )
    return DEFAULT_DRAFT, "default"


def context_config(facts: ModelFacts, ctx: int) -> tuple[dict[str, Any] | None, str | None]:
    """The config.json carrying the YaRN scaling `ctx` needs (vLLM applies --hf-overrides to the
    target only, not to the MTP draft layer, so it must be in the file), and the change in words;
    (None, None) when the folder's own config already reaches `ctx`. Nothing is written here."""
    if ctx <= 0:
        raise QwythosError(f"--ctx {ctx} is not a context length", "pass a positive number of tokens")
    if facts.yarn_ctx is not None and ctx <= facts.yarn_ctx:
        return None, None
    if facts.yarn_ctx is None and ctx <= facts.native_ctx:
        return None, None
    factor = float(2 ** math.ceil(math.log2(ctx / facts.native_ctx)))
    config = json.loads(json.dumps(facts.config))
    text = config["text_config"] if isinstance(config.get("text_config"), dict) else config
    key = "rope_scaling" if "rope_scaling" in text and "rope_parameters" not in text else "rope_parameters"
    rope = dict(text.get(key) or {})
    rope.update(rope_type="yarn", factor=factor, original_max_position_embeddings=facts.native_ctx)
    text[key] = rope
    text["max_position_embeddings"] = int(facts.native_ctx * factor)
    change = (
        f"YaRN factor {factor:g} over {facts.native_ctx} positions "
        f"(max_position_embeddings {int(facts.native_ctx * factor)}) for --ctx {ctx}"
    )
    return config, change


def write_overlay(source: Path, overlay: Path, config: dict[str, Any]) -> Path:
    """`overlay`: its own config.json (`config`) and a link to every other entry of `source` (the
    input, left untouched). An earlier overlay is updated in place: links are replaced atomically
    and links to entries `source` no longer has are removed. Returns `overlay`."""
    source = source.resolve()
    ensure_writable_dir(overlay, "overlay folder")
    overlay = overlay.resolve()
    if overlay == source:
        raise QwythosError(
            f"the overlay folder {overlay} is the input folder itself", "choose another output folder with -o"
        )
    names = set()
    for entry in sorted(source.iterdir()):
        if entry.name == "config.json" or overlay.is_relative_to(entry):  # the output folder inside it
            continue
        names.add(entry.name)
        dst = overlay / entry.name
        if dst.exists() and not dst.is_symlink():
            raise QwythosError(
                f"{dst} is not a link qwythos made", "remove it, or choose another output folder"
            )
        tmp = temp_name(dst)
        try:
            os.symlink(entry, tmp)
            os.replace(tmp, dst)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise write_error(dst, e) from e
    for old in overlay.iterdir():
        if old.is_symlink() and old.name not in names:
            old.unlink()
    text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    write_text_atomic(overlay / "config.json", text, inputs=[source / "config.json"])
    return overlay


def default_out_dir(folder: Path, engine: str) -> Path:
    """Where an export goes without -o: beside the model folder, never inside it (an input folder
    gains nothing, not even a subfolder)."""
    folder = folder.resolve()
    return folder.parent / f"{folder.name}-serve-{engine}"


def check_outputs(out_dir: Path, nodes: int, force: bool, overlay: bool = False) -> None:
    """Refuse to replace earlier launch files (and the overlay folder, when one is to be written)
    unless forced (checked before anything is written)."""
    names = [f"node{r}.sh" for r in range(nodes)] + ["launch.json", "README.md"] + [OVERLAY] * overlay
    existing = [n for n in names if (out_dir / n).exists()]
    if existing and not force:
        raise QwythosError(
            f"{out_dir / existing[0]} already exists", "pass --force to replace it, or choose -o"
        )


def write_launches(out_dir: Path, launches: list[NodeLaunch], readme: str) -> Path:
    """node<R>.sh per node (executable), launch.json, README.md (the caller ran `check_outputs`)."""
    ensure_writable_dir(out_dir, "output folder")
    for n in launches:
        path = out_dir / f"node{n.rank}.sh"
        body = "#!/usr/bin/env bash\n# generated by qwythos; start every node's script\nset -euo pipefail\n"
        body += "".join(f"export {k}={shlex.quote(v)}\n" for k, v in n.env.items())
        body += "exec " + " \\\n  ".join(_lines(n.argv)) + "\n"
        write_text_atomic(path, body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        n.script = path
    data = [{"rank": n.rank, "argv": n.argv, "env": n.env} for n in launches]
    write_text_atomic(out_dir / "launch.json", json.dumps(data, indent=2) + "\n")
    write_text_atomic(out_dir / "README.md", readme)
    return out_dir / "README.md"


def plan_topology(
    facts: ModelFacts, gpus: int, nodes: int, ctx: int | None, master_addr: str | None
) -> tuple[int, int, int]:
    """(tensor parallel size, nodes, context) after checking the folder can be served as asked."""
    if gpus < 1 or nodes < 1:
        raise QwythosError(f"--gpus {gpus} --nodes {nodes}: both must be at least 1", "pass positive counts")
    if nodes > 1 and not master_addr:
        raise QwythosError(
            f"{nodes} nodes need the head node's address", "pass --master-addr IP (reachable from every node)"
        )
    if facts.cfg.mtp_layers and not facts.has_head:
        raise QwythosError(
            f"{facts.folder / 'config.json'} promises {facts.cfg.mtp_layers} MTP layer but the folder has no "
            "mtp.* tensors: vLLM refuses to load it and SGLang accepts no draft",
            f"qwythos mtp restore {facts.folder} --from {BASE_MODEL_REPO} --hf {facts.folder}-mtp",
        )
    tp = gpus * nodes
    check_tp(facts.cfg, tp)
    return tp, nodes, ctx or min(START_CONTEXT, facts.yarn_ctx or facts.native_ctx)


def _lines(argv: list[str]) -> list[str]:
    """The command's words grouped one flag (with its value) per line."""
    out: list[str] = []
    for a in argv:
        if out and not a.startswith("--") and out[-1].startswith("--") and " " not in out[-1]:
            out[-1] += " " + shlex.quote(a)
        else:
            out.append(shlex.quote(a))
    return out


def topology_rows(gpus: int, nodes: int, host: str, port: int) -> list[str]:
    rows = ["| node | rank | GPUs | role |", "|---|---:|---:|---|"]
    for r in range(nodes):
        role = f"serves HTTP on {host}:{port}" if r == 0 else "worker (no HTTP)"
        rows.append(f"| {'head' if r == 0 else f'node {r}'} | {r} | {gpus} | {role} |")
    return rows


@dataclass(frozen=True)
class Engine:
    """One serving engine as a table row: everything that differs between vLLM and SGLang."""

    name: str  # the export command, and the default output folder `<DIR>-serve-<name>` beside DIR
    title: str  # as the engine spells itself
    version: str  # the engine release whose argument parser the flags were checked against
    port: int  # the engine's own default HTTP port
    master_port: int  # the engine's own default rendezvous port
    argv: Callable[[NodeSettings], list[str]]  # one node's command line
    drafting: Callable[[int], str]  # how the README describes drafting n tokens
    notes: Callable[[EngineExport, int], list[str]]  # (export, port) -> several nodes, the check, the traps
    check: Callable[[ModelFacts], None] | None = None  # an engine's own refusal of a folder


def _context_note(exp: EngineExport, facts: ModelFacts) -> str:
    """How the README's context line says where YaRN comes from."""
    if exp.overlay is not None:
        return f" (YaRN written into the overlay `{OVERLAY}/config.json`; the input is unchanged)"
    return f" (YaRN in config.json reaches {facts.yarn_ctx})" if facts.yarn_ctx else ""


def readme(engine: Engine, exp: EngineExport, facts: ModelFacts, host: str, port: int) -> str:
    """The README: what is served how, the topology, each node's command, then the engine's notes
    (several nodes, how to check it, the known traps)."""
    drafting = f"{engine.drafting(exp.draft)} ({exp.draft_source})" if exp.draft else "off"
    lines = [
        f"# Serving {facts.folder.name} with {engine.title}",
        "",
        f"Checked against: {exp.engine_version}. Generated by `qwythos export {exp.engine}`.",
        "",
        f"- tensor parallel {exp.tensor_parallel} = {exp.gpus_per_node} GPU(s) x {exp.nodes} node(s)",
        f"- context {exp.ctx} tokens" + _context_note(exp, facts),
        f"- MTP drafting: {drafting}",
        "",
        *topology_rows(exp.gpus_per_node, exp.nodes, host, port),
        "",
        "## Start",
        "",
        f"The model folder must exist at `{exp.model_dir}` on every node (same path; copy it, do not "
        "rely on links into another machine's disk).",
        "",
    ]
    if exp.overlay is not None:
        lines[-2:] = [
            f"The commands serve the overlay `{exp.model_dir}`: its own `config.json` (with the YaRN scaling) "
            f"and links to every other file of `{exp.source_dir}`, which is left as it was. Both must exist "
            "at these paths on every node (copy them; the links must resolve on each machine's own disk).",
            "",
        ]
    for n in exp.launches:
        lines += [f"Node rank {n.rank}: `bash node{n.rank}.sh`", "", "```bash", n.command, "```", ""]
    lines += engine.notes(exp, port)
    lines += [
        f"- Tool calls: `--tool-call-parser {TOOL_PARSER}`; reasoning split: `--reasoning-parser {REASONING_PARSER}`.",
        "",
    ]
    return "\n".join(lines)


def export_engine(
    engine: Engine,
    folder: str | Path,
    out: str | Path | None = None,
    *,
    gpus: int = 1,
    nodes: int = 1,
    ctx: int | None = None,
    draft: int | None = None,
    bench_gguf: str | Path | None = None,
    name: str = LOCAL_NAME,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    write_config: bool = True,
    force: bool = False,
) -> EngineExport:
    """Write node<R>.sh, launch.json and README.md for serving `folder` with `engine`: plan the
    topology and draft length, check the outputs before anything is written, write the overlay
    folder where the context needs YaRN that config.json lacks (`folder` itself is never modified),
    one launch per node, then the scripts and README. `port` and `master_port` default to the
    engine's own."""
    facts = read_model(folder)
    if engine.check is not None:
        engine.check(facts)
    port = engine.port if port is None else port
    master_port = engine.master_port if master_port is None else master_port
    tp, nodes_, ctx_ = plan_topology(facts, gpus, nodes, ctx, master_addr)
    d, how = choose_draft(draft, Path(bench_gguf) if bench_gguf else None, facts.has_head)
    out_dir = Path(out) if out else default_out_dir(facts.folder, engine.name)
    config, change = context_config(facts, ctx_)
    overlay = config is not None and write_config
    check_outputs(out_dir, nodes_, force, overlay)  # before anything is written
    source = facts.folder.resolve()
    model_dir = write_overlay(source, out_dir / OVERLAY, config) if overlay else source
    launches = [
        NodeLaunch(
            r,
            engine.argv(
                NodeSettings(model_dir, tp, ctx_, d, name, host, port, nodes_, r, master_addr, master_port)
            ),
        )
        for r in range(nodes_)
    ]
    exp = EngineExport(engine.name, engine.version, model_dir, out_dir, gpus, nodes_, tp, ctx_, d, how)
    exp.launches, exp.source_dir = launches, source
    if change is not None and overlay:
        exp.overlay = model_dir
        exp.config_changes = [f"{model_dir / 'config.json'}: {change} (the input folder is unchanged)"]
    elif change is not None:
        exp.config_changes = [change]
        exp.warnings.append(f"config.json needs {change} but no overlay was written (--no-write-config)")
    if not facts.has_head:
        exp.warnings.append(
            f"the folder has no mtp.* tensors: drafting is off (`{RESTORE_HINT}` puts it back)"
        )
    exp.readme = write_launches(exp.out_dir, launches, readme(engine, exp, facts, host, port))
    return exp
