"""Where a model's layers go (core/llamacpp/placement.py): decisions from made-up device lists and
real per-layer memory of the trained tiny model; this machine's device list through ggml."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest

from qwythos.core.errors import QwythosError
from qwythos.core.llamacpp import devices, placement
from qwythos.core.llamacpp.devices import Device
from qwythos.core.model.memory import ModelMemory, kv_cache_bytes, model_memory, recurrent_state_bytes

GIB = 2**30
MIB = 2**20
CPU = Device("CPU", "host", "cpu", "CPU", 64 * GIB, 64 * GIB)


def gpu(name: str, free_gib: float, kind: str = "gpu", backend: str = "CUDA") -> Device:
    return Device(name, "made up", kind, backend, int(free_gib * GIB), 80 * GIB)


def nine_b_like() -> ModelMemory:
    """32 blocks of 0.2 GiB (weights + state), a 0.25 GiB MTP block, a 0.75 GiB output layer."""
    return ModelMemory("made-up.gguf", 32768, "f16", [GIB // 5] * 32, [GIB // 4], 3 * GIB // 4, GIB // 2)


def test_fits_every_layer_on_one_gpu():
    m = nine_b_like()
    p = placement.place([CPU, gpu("CUDA0", 140)], m)
    assert (p.n_gpu_layers, p.n_layers, p.fits, p.cpu_layers) == (34, 34, True, 0)
    assert p.mtp_on_gpu and p.output_on_gpu and p.trunk_on_gpu == 32
    assert [(s.device, s.layers, s.bytes) for s in p.shares] == [("CUDA0", 34, sum(m.offloadable))]
    assert p.cpu_bytes == m.input  # only the token embedding stays behind
    assert p.reason.startswith("every layer (32 blocks, the MTP block, the output) and the KV cache")


def test_fits_partly_from_the_top_down_with_the_margin():
    m = nine_b_like()
    # 3.0 GiB free - 1 GiB margin = 2 GiB: output 0.75 + MTP 0.25 + 5 blocks x 0.2 = 2.0 fit, a 6th not
    p = placement.place([CPU, gpu("CUDA0", 3.0)], m)
    assert (p.n_gpu_layers, p.fits, p.trunk_on_gpu, p.mtp_on_gpu) == (7, False, 5, True)
    assert p.shares[0].bytes <= 2 * GIB < p.shares[0].bytes + GIB // 5
    assert p.cpu_bytes == m.input + 27 * (GIB // 5)
    assert "the last 7 of 34 layers (the output, the MTP block" in p.reason and "27 on the CPU" in p.reason
    # a smaller margin lets more in; room for the output alone keeps the MTP block on the CPU
    assert placement.place([gpu("CUDA0", 3.0)], m, margin=0).n_gpu_layers == 12
    alone = placement.place([gpu("CUDA0", 1.9)], m)
    assert (alone.n_gpu_layers, alone.output_on_gpu, alone.mtp_on_gpu) == (1, True, False)


def test_two_gpus_share_by_free_memory_as_llama_cpp_splits():
    m = nine_b_like()
    p = placement.place([CPU, gpu("CUDA0", 30), gpu("CUDA1", 10)], m)
    assert p.fits and p.n_gpu_layers == 34
    # rooms 29 and 9 GiB: layer i of the k offloaded goes to the first GPU whose cumulative share
    # exceeds i/k (llama.cpp's rule), 29/38 = 0.763 -> layers 0..25 and 26..33
    assert [s.layers for s in p.shares] == [26, 8] and p.tensor_split == pytest.approx([29 / 38, 9 / 38])
    assert sum(s.bytes for s in p.shares) == sum(m.offloadable)
    # a nearly full second GPU gets nothing rather than the output layer it could not hold
    lopsided = placement.place([gpu("CUDA0", 30), gpu("CUDA1", 1.5)], m)
    assert lopsided.fits and [s.layers for s in lopsided.shares] == [34, 0]


@pytest.mark.parametrize("free", [(3.0, 2.0), (2.5, 6.0), (4.0, 4.0, 1.6)])
def test_several_gpus_partly_each_within_its_room_and_one_more_layer_would_not_be(free):
    m = nine_b_like()
    gpus = [gpu(f"CUDA{i}", f) for i, f in enumerate(free)]
    p = placement.place([CPU, *gpus], m)
    rooms = [int(f * GIB) - GIB for f in free]
    assert 0 < p.n_gpu_layers < p.n_layers and not p.fits
    assert all(s.bytes <= r for s, r in zip(p.shares, rooms, strict=True))
    more = placement.split_layers(m.offloadable, p.n_gpu_layers + 1, rooms)
    assert any(b > r for (_, b), r in zip(more, rooms, strict=True))
    assert sum(s.layers for s in p.shares) == p.n_gpu_layers


def test_no_gpu_means_the_cpu():
    m = nine_b_like()
    for found in ([CPU], [], [CPU, Device("RPC[host:50052]", "worker", "gpu", "RPC", 8 * GIB, 8 * GIB)]):
        p = placement.place(found, m)
        assert (p.n_gpu_layers, p.fits, p.shares, p.cpu_bytes) == (0, False, [], m.total)
        assert p.reason.startswith("no GPU device") and "every layer on the CPU" in p.reason
    full = placement.place([CPU, gpu("CUDA0", 0.5)], m)  # less than the margin: nothing fits
    assert full.n_gpu_layers == 0 and full.reason.startswith("not even the output layer")


def test_integrated_gpus_only_without_discrete_ones_and_unknown_memory_uses_the_host():
    m = nine_b_like()
    igpu = Device("Vulkan0", "integrated", "igpu", "Vulkan", 0, 0)  # reports no memory of its own
    p = placement.place([CPU, igpu], m)
    assert p.fits and p.shares[0].free == CPU.free
    both = placement.place([CPU, igpu, gpu("CUDA0", 2.0)], m)
    assert [s.device for s in both.shares] == ["CUDA0"]


def test_split_layers_matches_llama_cpp_index_rule():
    # free 3:1, 8 layers: fractions 0, .125 ... .875 against bounds [.75, 1] -> 6 and 2
    assert placement.split_layers([1] * 8, 8, [3, 1]) == [(6, 6), (2, 2)]
    # only the last 4 of 8 offloaded, one GPU
    assert placement.split_layers(list(range(8)), 4, [5]) == [(4, 4 + 5 + 6 + 7)]


def test_model_memory_of_the_trained_tiny_model_adds_up_to_plan(rt_trained_gguf):
    from qwythos.core.gguf.view import read_view
    from qwythos.core.model.qwen35 import config_from_gguf

    view = read_view(rt_trained_gguf)
    cfg = config_from_gguf(view)
    m = model_memory(rt_trained_gguf, 4096, "q8_0")
    assert (len(m.layers), len(m.mtp)) == (cfg.n_layer, view.n_nextn) == (4, 1)
    weights = sum(t.nbytes for t in view.tensors)
    state = kv_cache_bytes(cfg, 4096, "q8_0", 1) + recurrent_state_bytes(cfg)
    assert m.total == weights + state  # every tensor and every byte of state, each counted once
    assert m.input == view.by_name["token_embd.weight"].nbytes
    assert m.layers[3] > m.layers[0]  # the full-attention block carries its KV cache
    assert model_memory(rt_trained_gguf, 8192).layers[3] > model_memory(rt_trained_gguf, 4096).layers[3]
    with pytest.raises(QwythosError, match="--kv-type"):
        model_memory(rt_trained_gguf, 4096, "q5_9")


def test_this_machine_lists_the_cpu_through_ggml(rt_trained_gguf):
    found = devices.list_devices()
    cpu = [d for d in found if d.kind == "cpu"]
    assert len(cpu) == 1 and cpu[0].backend == "CPU" and 0 < cpu[0].free <= cpu[0].total
    names = [b.name for b in devices.compiled_backends()]
    assert "CPU" in names and "RPC" in names  # install.sh compiles RPC in everywhere
    if not placement.gpus_of(found):  # this machine (no GPU): the CPU, and the note says why if built for one
        p = placement.place(found, model_memory(rt_trained_gguf, 4096))
        assert p.n_gpu_layers == 0 and "every layer on the CPU" in p.reason


def test_a_gpu_backend_without_devices_is_one_note():
    B = devices.Backend
    assert devices.missing_gpu_note([B("CPU", 1), B("RPC", 0)]) is None
    note = devices.missing_gpu_note([B("CUDA", 0), B("CPU", 1), B("RPC", 0)])
    assert note.startswith("this llama.cpp build has CUDA, but no CUDA device is usable here")
    assert "everything runs on the CPU" in note
    assert devices.missing_gpu_note([B("CUDA", 1), B("CPU", 1)]) is None


def test_doctor_says_where_a_models_layers_go(rt_trained_gguf, tmp_path):
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=300)
    proc = run(
        [sys.executable, "-m", "qwythos.cli", "doctor", str(rt_trained_gguf), "--ctx", "4096", "--json"]
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [d["name"] for d in out["devices"] if d["kind"] == "cpu"] == ["CPU"]
    assert {"CPU", "RPC"} <= {b["name"] for b in out["backends"]}
    placed = out["placement"]
    assert (placed["n_layers"], placed["n_trunk"], placed["n_mtp"], placed["ctx"]) == (6, 4, 1, 4096)
    if not placement.gpus_of([Device(**d) for d in out["devices"]]):
        assert placed["n_gpu_layers"] == 0 and placed["reason"].startswith("no GPU device")
    text = run([sys.executable, "-m", "qwythos.cli", "doctor", str(rt_trained_gguf)])
    assert text.returncode == 0 and f"where {rt_trained_gguf.name}'s layers go" in text.stdout
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00truncated")
    proc = run([sys.executable, "-m", "qwythos.cli", "doctor", str(bad)])
    assert proc.returncode == 1 and proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr


# --- -ngl auto: the default of load_model and every command --------------------------------------
def test_gpu_layers_flag_reads_auto_or_a_count():
    parse = placement.parse_gpu_layers
    assert parse(None) == parse("auto") == parse(" AUTO ") == placement.AUTO
    assert (parse("0"), parse("5"), parse(7)) == (0, 5, 7)
    for bad in ("-1", "lots", "2.5", ""):
        with pytest.raises(QwythosError, match="neither auto nor a number of layers") as e:
            parse(bad)
        assert "-ngl 20" in e.value.hint


def test_a_given_count_is_passed_as_is_and_says_where_it_lands():
    g = placement.given(0, [CPU, gpu("CUDA0", 80)], 32, 1)
    assert (g.n_gpu_layers, g.setting, g.reason) == (0, 0, "-ngl 0: every layer on the CPU")
    cpu_only = placement.given(5, [CPU], 32, 1)
    assert cpu_only.n_gpu_layers == 5 and "no GPU device (devices: CPU)" in cpu_only.reason
    on_gpu = placement.given(5, [CPU, gpu("CUDA0", 80)], 32, 1)
    assert on_gpu.reason == "-ngl 5 as given: the last 5 of 34 layers on CUDA0" and not on_gpu.fits
    every = placement.given(placement.ALL_LAYERS, [CPU], 32, 1, rpc=True, auto=True)
    assert every.setting == placement.AUTO and every.fits
    assert every.reason == "-ngl auto with --rpc: every layer on the rpc-server workers"


def test_placement_keys_each_device_and_its_layers():
    m = nine_b_like()
    two = placement.place([CPU, gpu("CUDA0", 30), gpu("CUDA1", 10)], m)
    assert two.key == "CUDA0:26,CUDA1:8"
    assert placement.place([CPU, gpu("CUDA0", 140)], m).key == "CUDA0:34"
    assert placement.place([CPU], m).key == placement.given(5, [CPU], 32, 1).key == ""
    d = two.to_dict()
    assert d["n_gpu_layers"] == 34 and d["reason"] == two.reason and d["mtp_on_gpu"]
    assert [(s["device"], s["layers"]) for s in d["devices"]] == [("CUDA0", 26), ("CUDA1", 8)]
    json.dumps(d)  # --json prints it as it is


def test_choose_placement_for_a_real_file(rt_trained_gguf):
    from qwythos.core.llamacpp.handles import choose_placement, read_model_info

    info = read_model_info(rt_trained_gguf)
    mem = model_memory(rt_trained_gguf, 512)
    cpu = choose_placement(info, "auto", n_ctx=512, devices=[CPU])
    assert (cpu.n_gpu_layers, cpu.n_layers, cpu.setting) == (0, 6, "auto")
    assert cpu.reason.startswith("no GPU device") and cpu.cpu_bytes == mem.total
    big = choose_placement(info, "auto", n_ctx=512, devices=[CPU, gpu("CUDA0", 8)])
    assert big.fits and big.n_gpu_layers == 6 and big.shares[0].bytes == sum(mem.offloadable)
    # room for the output layer and the MTP block, not the top trunk block
    room = placement.DEFAULT_MARGIN + mem.output + mem.mtp[0]
    tight = Device("CUDA0", "made up", "gpu", "CUDA", room, 8 * GIB)
    part = choose_placement(info, "auto", n_ctx=512, devices=[CPU, tight])
    assert (part.n_gpu_layers, part.mtp_on_gpu, part.trunk_on_gpu) == (2, True, 0)
    # without the MTP layer loaded its bytes are not counted: the top trunk block fits too
    no_mtp = choose_placement(info, "auto", n_ctx=512, load_mtp=False, devices=[CPU, tight])
    assert no_mtp.n_gpu_layers == 3 and no_mtp.trunk_on_gpu == 1
    # a longer context grows the KV cache of the layers placed
    assert choose_placement(info, "auto", n_ctx=8192, devices=[CPU, tight]).n_gpu_layers <= 2
    assert choose_placement(info, 5, devices=[CPU, tight]).n_gpu_layers == 5
    assert choose_placement(info, "auto", rpc=True, devices=[CPU]).n_gpu_layers == placement.ALL_LAYERS


def test_load_model_places_auto_by_default_on_this_cpu_build(rt_trained_gguf):
    from qwythos.core.llamacpp.handles import load_model

    if placement.gpus_of(devices.list_devices()):
        pytest.skip("this machine has a GPU: the CPU-only default is not observable")
    with load_model(rt_trained_gguf) as m:
        assert m.gpu_layers == 0 and m.placed.setting == "auto"
        assert m.placed.reason.startswith("no GPU device") and m.placed.n_layers == 6
        assert m.placement == ""  # the costs key of a CPU run is what it always was
    with load_model(rt_trained_gguf, n_gpu_layers=0) as m:
        assert m.gpu_layers == 0 and m.placed.reason == "-ngl 0: every layer on the CPU"
    with load_model(rt_trained_gguf, n_gpu_layers=5) as m:  # no GPU: llama.cpp keeps them on the CPU
        assert m.gpu_layers == 5 and m.placement == "ngl=5" and "stays on the CPU" in m.placed.reason
    with pytest.raises(QwythosError, match="neither auto nor"):
        load_model(rt_trained_gguf, n_gpu_layers="most")


def _recording_loads(monkeypatch, found):
    """load_model seeing `found` as this build's devices; what each llama.cpp load was asked for."""
    from qwythos.core.llamacpp import handles

    asked = []
    real = handles._load_handle

    def record(info, **kw):
        asked.append({"n_gpu_layers": kw["n_gpu_layers"], "tensor_split": kw["tensor_split"]})
        return real(info, **kw)

    monkeypatch.setattr(handles, "list_devices", lambda: found)
    monkeypatch.setattr(handles, "_load_handle", record)
    return handles.load_model, asked


def test_auto_asks_llama_cpp_for_the_computed_layers_and_split(monkeypatch, rt_trained_gguf):
    from qwythos.core.drafting import costs

    load_model, asked = _recording_loads(monkeypatch, [CPU, gpu("CUDA0", 30), gpu("CUDA1", 10)])
    with load_model(rt_trained_gguf, n_ctx=512) as m:  # no such GPUs really: llama.cpp uses the CPU
        two = m.placement
        assert m.gpu_layers == 6 and m.placed.fits and m.placed.mtp_on_gpu
        assert [s.layers for s in m.placed.shares] == [5, 1]  # 29:9 of 6 layers, llama.cpp's rule
        assert m.tokenize("def f():")  # loaded and usable
    assert asked[-1]["n_gpu_layers"] == 6 and asked[-1]["tensor_split"] == pytest.approx([29 / 38, 9 / 38])
    assert two == "ngl=6|gpu=CUDA0:5,CUDA1:1"
    load_model, asked = _recording_loads(monkeypatch, [CPU, gpu("CUDA0", 30)])
    with load_model(rt_trained_gguf, n_ctx=512) as m:
        one = m.placement
    assert asked[-1] == {"n_gpu_layers": 6, "tensor_split": [1.0]} and one == "ngl=6|gpu=CUDA0:6"
    with load_model(rt_trained_gguf, n_gpu_layers=0) as m:  # -ngl 0 forces the CPU, a GPU or not
        cpu = m.placement
    assert asked[-1]["n_gpu_layers"] == 0 and cpu == ""
    with load_model(rt_trained_gguf, n_gpu_layers=3) as m:
        three = m.placement
    assert asked[-1] == {"n_gpu_layers": 3, "tensor_split": []} and three == "ngl=3"
    # the draft-cost cache keeps each placement's measurements apart
    keys = {json.dumps(costs.cost_key(rt_trained_gguf, 2, p), sort_keys=True) for p in (two, one, cpu, three)}
    assert len(keys) == 4


def test_may_offload_decides_whether_host_memory_bounds_the_context(monkeypatch):
    """--ctx is checked against this machine's memory only when every layer stays here."""
    from qwythos.core.llamacpp import devices

    monkeypatch.setattr(devices, "list_devices", lambda: [CPU])
    assert not placement.may_offload("auto") and not placement.may_offload(0)
    assert placement.may_offload(5) and placement.may_offload(0, rpc="10.0.0.2:50052")
    monkeypatch.setattr(devices, "list_devices", lambda: [CPU, gpu("CUDA0", 20)])
    assert placement.may_offload("auto") and placement.may_offload(None) and not placement.may_offload(0)
