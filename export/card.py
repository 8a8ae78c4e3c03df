"""The Hub README (model card) of a GGUF repository: every fact in it (names, sampling, context,
draft length, tool versions) comes from core/model/release.py, core/drafting/lengths.py and the
export that sets the tool up."""

from __future__ import annotations

from dataclasses import dataclass

from qwythos.core.drafting.lengths import DEFAULT_DRAFT
from qwythos.core.model.release import (
    BASE_MODEL_REPO,
    LICENSE,
    LOCAL_NAME,
    MAX_NEW_TOKENS,
    MODEL_CONTEXT,
    MODEL_REPO,
    REPEAT_PENALTY,
    START_CONTEXT,
    TEMPERATURE,
    TOP_K,
    TOP_P,
    pick_default,
)
from qwythos.export.koboldcpp import DEFAULT_GPULAYERS, KOBOLD_MTP_VERSION, KOBOLD_VERSION
from qwythos.export.ollama import MIN_OLLAMA, MIN_OLLAMA_HEAD, RENDERER


@dataclass
class QuantRow:
    """One GGUF in the card's table."""

    file: str
    quant: str
    size_bytes: int
    sha256: str
    has_mtp: bool


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def render_card(
    repo_id: str,
    rows: list[QuantRow],
    *,
    modelfile_name: str | None = "Modelfile",
    ollama_file: str | None = None,
    has_sums: bool = True,
    mmproj: QuantRow | None = None,
) -> str:
    """README.md for a GGUF repository: front matter, quant table, sampling, usage per tool."""
    rows = sorted(rows, key=lambda r: (r.size_bytes, r.file))
    default = pick_default(rows)
    mtp_row = next((r for r in rows if r.has_mtp), None)
    pick = default.file if default else "MODEL.gguf"
    lines = [
        "---",
        f"license: {LICENSE}",
        f"base_model: {MODEL_REPO}",
        "base_model_relation: quantized",
        "library_name: gguf",
        "pipeline_tag: text-generation",
        "tags:",
        "- gguf",
        "- qwen35",
        "- llama.cpp",
        "- mtp",
        "---",
        "",
        f"# {repo_id.split('/')[-1]}",
        "",
        f"GGUF files of [{MODEL_REPO}](https://huggingface.co/{MODEL_REPO}) (a full fine-tune of "
        f"[{BASE_MODEL_REPO}](https://huggingface.co/{BASE_MODEL_REPO}); llama.cpp arch `qwen35`), "
        "made with `qwythos`. Files marked MTP carry the multi-token-prediction (nextn) head for "
        "self-speculative decoding.",
        "",
        "## Files",
        "",
        "| file | quant | size | MTP head | sha256 |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| [{r.file}](./{r.file}) | {r.quant} | {_gib(r.size_bytes)} | "
            f"{'yes' if r.has_mtp else 'no'} | `{r.sha256}` |"
        )
    if mmproj is not None:
        lines.append(
            f"| [{mmproj.file}](./{mmproj.file}) | {mmproj.quant} vision projector | "
            f"{_gib(mmproj.size_bytes)} | - | `{mmproj.sha256}` |"
        )
        lines += [
            "",
            f"Images work through the vision projector `{mmproj.file}` (Qwen3.5's vision tower, "
            f"unchanged by the fine-tune): llama.cpp `--mmproj {mmproj.file}`, LM Studio and KoboldCpp "
            "find it beside the model (`qwythos export` sets it up), Ollama takes it as a second `FROM`.",
        ]
    if has_sums:
        lines += ["", "Check a download with `sha256sum -c SHA256SUMS`."]
    lines += [
        "",
        "## Sampling (from the model card)",
        "",
        f"temperature {TEMPERATURE}, top_p {TOP_P}, top_k {TOP_K}, repeat penalty {REPEAT_PENALTY}, "
        f"up to {MAX_NEW_TOKENS} new tokens. Greedy decoding or temperature <= 0.3 falls into "
        "repetition loops. Every answer starts with a `<think>...</think>` block; tools are called "
        f"with `<tool_call>...</tool_call>` blocks. Start at {START_CONTEXT // 1024}k context and grow; the full "
        f"{MODEL_CONTEXT} tokens need far more memory than one consumer GPU has.",
        "",
        "## Usage",
        "",
        "### llama.cpp",
        "",
        "```sh",
        f"llama-server -m {pick} --jinja -c {START_CONTEXT} --temp {TEMPERATURE} --top-p {TOP_P} "
        f"--top-k {TOP_K} --repeat-penalty {REPEAT_PENALTY}",
    ]
    if mtp_row:
        lines.append(
            f"llama-server -m {mtp_row.file} --jinja -c {START_CONTEXT} --spec-type draft-mtp "
            f"--spec-draft-n-max {DEFAULT_DRAFT}"
        )
    lines += [
        "```",
        "",
        "### Ollama",
        "",
    ]
    if modelfile_name:
        lines += [
            f"Download `{ollama_file or pick}` and the `{modelfile_name}` into one folder, then:",
            "",
            "```sh",
            f"ollama create {LOCAL_NAME} -f {modelfile_name}",
            f"ollama run {LOCAL_NAME}",
            "```",
            "",
            f"The Modelfile selects Ollama's `{RENDERER}` renderer and parser (thinking and tool calls "
            f"separated), the sampling above and the turn-ending stop tokens. Install Ollama >= {MIN_OLLAMA} "
            f"(its dedicated Qwen3.5 renderer and parser), or >= {MIN_OLLAMA_HEAD} for a file with the MTP head "
            "(its llama-server engine loads the nextn layer; `REQUIRES` in the Modelfile is not checked "
            "by Ollama).",
        ]
    else:
        lines += ["```sh", f"qwythos export ollama {pick} && ollama create {LOCAL_NAME} -f Modelfile", "```"]
    if mtp_row and mtp_row.file != ollama_file:
        lines += [
            f"For MTP drafting use `qwythos export ollama {mtp_row.file}` (writes "
            f"`PARAMETER draft_num_predict {DEFAULT_DRAFT}`, Ollama >= {MIN_OLLAMA_HEAD}).",
        ]
    lines += [
        "",
        "### LM Studio",
        "",
        "```sh",
        f"lms import {pick} --user-repo {repo_id} -y -c",
        "```",
        "",
        f"or `qwythos export lmstudio {pick}`, which also writes the model's definition (`model.yaml` + "
        "`manifest.json` in LM Studio's hub folder) with the sampling above (min-p off, LM Studio's "
        "default is 0.05), reasoning/tool-use metadata and MTP drafting for MTP files, and prints the "
        "`lms load` line.",
        "",
        "### KoboldCpp",
        "",
        "```sh",
        f"koboldcpp --model {pick} --contextsize {START_CONTEXT} --gpulayers {DEFAULT_GPULAYERS} --jinja --jinja_tools",
        "```",
        "",
        f"or `qwythos export koboldcpp {pick}` for a `.kcpps` launch config (KoboldCpp {KOBOLD_VERSION} keys, "
        f"the sampling above as `gendefaults`, `--usemtp` for MTP files: MTP needs KoboldCpp >= "
        f"{KOBOLD_MTP_VERSION}).",
        "",
        "## License",
        "",
        "Apache-2.0, as the original model.",
        "",
    ]
    return "\n".join(lines)
