"""`qwythos run` and `qwythos bench` on the trained tiny model; `chat` through stdin."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from qwythos.cli import app

runner = CliRunner()


def test_run_json_mtp_equals_plain(rt_trained_gguf):
    args = [
        "run",
        str(rt_trained_gguf),
        "-p",
        "def main():",
        "--raw",
        "--temp",
        "0",
        "--max-tokens",
        "24",
        "--json",
    ]
    a = runner.invoke(app, args + ["--draft", "3"])
    b = runner.invoke(app, args + ["--no-mtp"])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    ga, gb = json.loads(a.stdout)["generation"], json.loads(b.stdout)["generation"]
    assert ga["tokens"] == gb["tokens"] and len(ga["tokens"]) == 24
    assert ga["stats"]["draft"] == 3 and ga["stats"]["drafted"] > 0 and gb["stats"]["drafted"] == 0
    assert (
        json.loads(a.stdout)["draft"]["mode"] == "fixed" and json.loads(b.stdout)["draft"]["mode"] == "plain"
    )
    c = runner.invoke(app, args + ["-t", "1"])  # auto is the default; -t like llama.cpp
    assert c.exit_code == 0, c.output
    out = json.loads(c.stdout)
    assert out["generation"]["tokens"] == gb["tokens"]
    d = out["draft"]
    assert d["mode"] == "auto" and d["reason"] == "no cached costs: measuring" and 0 <= d["chosen"] <= 4
    assert sum(d["auto"]["steps_per_draft_length"]) > 0 and d["auto"]["acceptance_per_depth"]


def test_max_tokens_zero_and_negative(rt_trained_gguf):
    base = ["run", str(rt_trained_gguf), "-p", "def main():", "--raw", "--json", "--max-tokens"]
    r = runner.invoke(app, base + ["0"])
    assert r.exit_code == 0, r.output
    g = json.loads(r.stdout)["generation"]
    assert g["tokens"] == [] and g["stats"]["prompt_tokens"] > 0 and g["finish_reason"] == "length"
    r = runner.invoke(app, base + ["-1"])
    assert r.exit_code == 1 and "out of range" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["run", str(rt_trained_gguf), "-p", "hi", "--draft", "lots"])
    assert r.exit_code == 1 and "not a number" in r.output


def test_run_chat_template_and_bad_input(rt_trained_gguf, rt_trained_trunk_gguf):
    r = runner.invoke(
        app, ["run", str(rt_trained_gguf), "-p", "hi", "--system", "S", "--max-tokens", "8", "--seed", "1"]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["run", str(rt_trained_trunk_gguf), "-p", "hi", "--draft", "2"])
    assert r.exit_code == 1 and "no MTP" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["run", str(rt_trained_trunk_gguf), "-p", "hi", "--max-tokens", "4"])
    assert r.exit_code == 0 and "no MTP layer; decoding without drafts" in " ".join(r.output.split())
    r = runner.invoke(app, ["run", str(rt_trained_trunk_gguf), "-p", "hi", "--max-tokens", "4", "--json"])
    d = json.loads(r.stdout)["draft"]
    assert d["mode"] == "plain" and "no MTP head" in d["reason"]
    r = runner.invoke(app, ["run", str(rt_trained_gguf), "-p", "word " * 300, "--ctx", "64"])
    assert r.exit_code == 1 and "context holds 64" in r.output


def test_bench_json_and_table(rt_trained_gguf, draft_cost_cache, monkeypatch):
    from qwythos.core.drafting import costs as draft_costs

    # the suite's machine is busy (the tiny model's passes take a millisecond): the sanity check that
    # keeps scattered or impossible measurements out of the cache is tested in test_untrusted_flags
    monkeypatch.setattr(draft_costs, "MAX_SCATTER", float("inf"))
    monkeypatch.setattr(draft_costs, "BOUND_SLACK", 1e6)
    monkeypatch.setattr(draft_costs, "GUARD_SLACK", 1e6)
    r = runner.invoke(
        app, ["bench", str(rt_trained_gguf), "--max-tokens", "16", "--drafts", "1,2", "--json", "-t", "2"]
    )
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    rows = rep["rows"]
    # the user's alternative first: the same file without its head, measured in the same rounds
    assert [x["mode"] for x in rows] == ["--no-mtp", "plain", "mtp draft 1", "mtp draft 2", "auto"]
    assert rep["baseline"] == "--no-mtp" and rows[0]["speedup"] == 1.0
    assert all(x["same_output"] for x in rows) and rows[3]["tokens_per_pass"] > 1.0
    assert rep["recommended"] in (0, 1, 2) and all(x["predicted_speedup"] > 0 for x in rows[1:])
    # the acceptance each length needs on these costs: a share, or None where nothing pays
    assert set(rep["break_even"]) == {"1", "2"}
    assert all(a is None or 0.0 <= a <= 1.0 for a in rep["break_even"].values())
    assert len(rep["costs"]["verify_ms"]) == 3 and rep["costs"]["head_ms"] > 0
    assert rep["placed"]["setting"] == "auto" and rep["placed"]["reason"]  # which device held what, why
    # the costs went to the cache: run starts from them
    from qwythos.core.drafting.costs import recommended_draft

    assert (
        rep["cache_file"] == str(draft_cost_cache)
        and recommended_draft(rt_trained_gguf, 2) == rep["recommended"]
    )
    run = [
        "run",
        str(rt_trained_gguf),
        "-p",
        "def f():",
        "--raw",
        "--temp",
        "0",
        "--max-tokens",
        "8",
        "--json",
    ]
    r = runner.invoke(app, run + ["-t", "2"])
    assert r.exit_code == 0, r.output
    assert "qwythos bench" in json.loads(r.stdout)["draft"]["reason"]
    r = runner.invoke(app, run + ["-t", "1"])  # another thread count was not measured
    assert json.loads(r.stdout)["draft"]["reason"] == "no cached costs: measuring"
    r = runner.invoke(app, ["bench", str(rt_trained_gguf), "--max-tokens", "8", "--drafts", "2"])
    assert (
        r.exit_code == 0
        and "plain" in r.output
        and "tok/s" in r.output
        and "recommended: --draft" in r.output
        and "placement: -ngl" in r.output
        and "acceptance at which drafting pays on this machine" in r.output
    )
    r = runner.invoke(
        app, ["bench", str(rt_trained_gguf), "--max-tokens", "8", "--drafts", "1", "--no-baseline", "--json"]
    )
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert [x["mode"] for x in rep["rows"]] == ["plain", "mtp draft 1", "auto"] and rep["baseline"] == "plain"


def test_bench_without_a_head_says_plain_only(rt_trained_trunk_gguf):
    r = runner.invoke(app, ["bench", str(rt_trained_trunk_gguf), "--max-tokens", "8", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert [x["mode"] for x in rep["rows"]] == ["plain"] and rep["recommended"] is None
    assert "measured plain decoding only" in rep["note"]


def test_chat_streams_and_exits(rt_trained_gguf):
    r = runner.invoke(
        app,
        ["chat", str(rt_trained_gguf), "--max-tokens", "12", "--seed", "0", "-t", "1"],
        input="hello\nagain\n/exit\n",
    )
    assert r.exit_code == 0, r.output
    assert r.output.count("generated") == 2
    assert " new) at" in r.output  # turn 2 reused turn 1's cache and prefilled only the new part


def test_run_with_tools_file(rt_trained_gguf, tmp_path):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    f = tmp_path / "tools.json"
    f.write_text(json.dumps(tools))
    base = ["run", str(rt_trained_gguf), "-p", "weather in Paris?", "--max-tokens", "4", "--json"]
    with_tools = runner.invoke(app, base + ["--tools", str(f)])
    without = runner.invoke(app, base)
    assert with_tools.exit_code == 0 and without.exit_code == 0, with_tools.output
    n_with = json.loads(with_tools.stdout)["generation"]["stats"]["prompt_tokens"]
    n_without = json.loads(without.stdout)["generation"]["stats"]["prompt_tokens"]
    assert n_with > n_without + 20  # the template rendered the tool's definition into the prompt
    f.write_text('{"tools": [{"type": "function", "function": {}}]}')
    bad = runner.invoke(app, base + ["--tools", str(f)])
    assert bad.exit_code == 1 and "no function name" in bad.output and "Traceback" not in bad.output
    missing = runner.invoke(app, base + ["--tools", str(tmp_path / "none.json")])
    assert missing.exit_code == 1 and "not found" in missing.output


def test_gpu_layers_flag_auto_by_default_and_given_counts(rt_trained_gguf):
    """-ngl auto is the default (this CPU build: every layer on the CPU, and run --json says why);
    0 and a count are passed as given; anything else is one message."""
    from qwythos.core.llamacpp import devices, placement

    base = ["run", str(rt_trained_gguf), "-p", "def f():", "--raw", "--temp", "0", "--max-tokens", "6"]
    runs = {}
    for extra in ([], ["-ngl", "auto"], ["-ngl", "0"], ["--gpu-layers", "5"]):
        r = runner.invoke(app, base + ["--json", *extra])
        assert r.exit_code == 0, r.output
        runs[" ".join(extra)] = json.loads(r.stdout)
    placed = runs[""]["placement"]
    assert placed["setting"] == "auto" and placed["n_layers"] == 6 and placed["rpc"] == []
    assert runs["-ngl auto"]["placement"]["setting"] == "auto"
    assert runs["-ngl 0"]["placement"]["n_gpu_layers"] == 0 and runs["-ngl 0"]["placement"]["setting"] == 0
    assert runs["--gpu-layers 5"]["placement"]["n_gpu_layers"] == 5
    if not placement.gpus_of(devices.list_devices()):  # this machine: the CPU, the same output each way
        assert placed["n_gpu_layers"] == 0 and placed["reason"].startswith("no GPU device")
        assert len({tuple(x["generation"]["tokens"]) for x in runs.values()}) == 1
    r = runner.invoke(app, base + ["-ngl", "many"])
    assert r.exit_code == 1 and "neither auto nor a number of layers" in r.output
    assert "Traceback" not in r.output
