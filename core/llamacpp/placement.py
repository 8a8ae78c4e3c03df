"""Where a model's layers go: how many of them a machine's GPUs hold, decided from the devices' free
memory and the model's memory layer by layer (core/model/memory.py: weights, KV cache or recurrent
state, at the run's --ctx and KV type).

llama.cpp's rule, which this follows exactly (llama-model.cpp, load_tensors): `n_gpu_layers = k`
offloads the last k of its layers, counting the output layer as one more after the last block, so
the output goes first, then the MTP block, then the trunk from the top down; the token embedding
stays on the CPU. Several GPUs share the offloaded layers in proportion to `tensor_split`, here the
free memory each has beyond the margin (llama.cpp's default splits by raw free memory, which can
hand a nearly full GPU the output layer: the loader passes `tensor_split` on). Each layer's KV
cache lives where the layer lives.

The decision: every layer when all of them fit in the GPUs' free memory, keeping `margin` bytes of
each for llama.cpp's compute buffers; else the most layers that fit; no GPU device (or none with
room for even the output layer): the CPU. A pure function of its inputs, tested on made-up device
lists (tests/test_placement.py); `qwythos doctor MODEL` prints it for this machine.

`-ngl/--gpu-layers` (`parse_gpu_layers`): `auto`, the default of every command and of
core/llamacpp/handles.load_model, is this decision; a number is passed to llama.cpp as given
(`given`: 0 keeps every layer on the CPU), and with --rpc workers `auto` offloads every layer.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from qwythos.core.errors import QwythosError
from qwythos.core.llamacpp.devices import Device
from qwythos.core.model.memory import ModelMemory

GIB = 2**30
#: Free memory each GPU keeps for llama.cpp's compute buffers and the allocator's slack.
DEFAULT_MARGIN = 1 * GIB
#: Device kinds that take layers: discrete GPUs, else integrated ones (as llama.cpp picks them).
GPU_KINDS = ("gpu", "igpu")
#: -ngl's default: the layers placed from the GPUs' free memory (`place`).
AUTO = "auto"
#: n_gpu_layers meaning "every layer" (llama.cpp clamps it to the model's layers + output).
ALL_LAYERS = 999


def parse_gpu_layers(value: str | int | None) -> int | str:
    """-ngl/--gpu-layers: AUTO (also for None) or a number of layers, 0 or more."""
    if value is None or (isinstance(value, str) and value.strip().lower() == AUTO):
        return AUTO
    text = str(value).strip()
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0 or isinstance(value, bool):
        raise QwythosError(
            f"--gpu-layers {text} is neither auto nor a number of layers",
            "use auto (the default: every layer that fits in the GPUs' free memory), "
            "0 (every layer on the CPU) or a count, e.g. -ngl 20",
        )
    return n


@dataclass
class Share:
    """What one GPU holds."""

    device: str
    layers: int  # offloaded layers (the output layer counts as one)
    bytes: int
    free: int


@dataclass
class Placement:
    n_gpu_layers: int  # llama_model_params.n_gpu_layers: 0 = everything on the CPU
    n_layers: int  # layers llama.cpp can offload: trunk + MTP blocks + the output layer
    n_trunk: int
    n_mtp: int
    fits: bool  # every layer (and so the MTP block and the whole KV cache) on GPUs
    reason: str
    shares: list[Share] = field(default_factory=list)
    cpu_bytes: int = 0  # what stays on the CPU: its layers and the token embedding
    tensor_split: list[float] = field(default_factory=list)  # llama_model_params.tensor_split, per GPU
    margin: int = DEFAULT_MARGIN
    setting: int | str = AUTO  # what -ngl said: AUTO (this decision) or the number given

    def to_dict(self) -> dict:
        """For --json: which device holds what and why."""
        return {
            "setting": self.setting,
            "n_gpu_layers": self.n_gpu_layers,
            "n_layers": self.n_layers,
            "fits": self.fits,
            "mtp_on_gpu": self.mtp_on_gpu,
            "reason": self.reason,
            "devices": [vars(s).copy() for s in self.shares],
            "cpu_layers": self.cpu_layers,
            "cpu_bytes": self.cpu_bytes,
            "tensor_split": self.tensor_split,
        }

    @property
    def key(self) -> str:
        """The GPUs' part of the measured-costs key: each device and the layers it holds."""
        held = [s for s in self.shares if s.layers]
        return ",".join(f"{s.device}:{s.layers}" for s in held) if held else ""

    @property
    def cpu_layers(self) -> int:
        return self.n_layers - self.n_gpu_layers

    @property
    def mtp_on_gpu(self) -> bool:
        return self.n_mtp > 0 and self.n_gpu_layers >= 1 + self.n_mtp

    @property
    def output_on_gpu(self) -> bool:
        return self.n_gpu_layers >= 1

    @property
    def trunk_on_gpu(self) -> int:
        return max(0, self.n_gpu_layers - 1 - self.n_mtp)


def may_offload(setting: int | str | None, rpc: object = None) -> bool:
    """Whether some layers may live outside this machine's memory (so a memory check against it
    would be wrong): RPC workers, a layer count above 0, or auto with a GPU device in this build."""
    if rpc:
        return True
    setting = parse_gpu_layers(setting)
    if setting == AUTO:
        from qwythos.core.llamacpp.devices import list_devices

        return bool(gpus_of(list_devices()))
    return setting > 0


def gpus_of(devices: list[Device]) -> list[Device]:
    """The devices llama.cpp would offload to: the discrete GPUs, else the integrated ones (RPC
    workers left out: they are placed by --rpc)."""
    local = [d for d in devices if d.backend != "RPC"]
    for kind in GPU_KINDS:
        found = [d for d in local if d.kind == kind]
        if found:
            return found
    return []


def _free(d: Device, host: Device | None) -> int:
    """A device that reports no memory at all uses the host's (as llama.cpp assumes)."""
    if d.free == 0 and d.total == 0 and host is not None:
        return host.free
    return d.free


def split_layers(sizes: list[int], k: int, weights: list[float]) -> list[tuple[int, int]]:
    """(layers, bytes) each GPU gets when the last `k` of `sizes` are offloaded and split in
    proportion to `weights` (llama_model_params.tensor_split), exactly as llama.cpp assigns them."""
    total = sum(weights)
    bounds, acc = [], 0.0
    for w in weights:
        acc += w
        bounds.append(acc / total)
    out = [[0, 0] for _ in weights]
    start = len(sizes) - k
    for il in range(start, len(sizes)):
        g = min(bisect.bisect_right(bounds, (il - start) / k), len(weights) - 1)
        out[g][0] += 1
        out[g][1] += sizes[il]
    return [(n, b) for n, b in out]


def _gib(n: int) -> str:
    """Bytes in a reason: GiB (MiB below a quarter GiB)."""
    return f"{n / GIB:.2f} GiB" if n >= GIB // 4 else f"{n / 2**20:.2f} MiB"


def place(devices: list[Device], memory: ModelMemory, margin: int = DEFAULT_MARGIN) -> Placement:
    """How many layers go to which GPU, and why."""
    sizes = memory.offloadable
    n = len(sizes)
    base = dict(n_layers=n, n_trunk=len(memory.layers), n_mtp=len(memory.mtp), margin=margin)
    gpus = gpus_of(devices)
    if not gpus:
        names = ", ".join(sorted({d.name for d in devices})) or "none"
        reason = f"no GPU device (devices: {names}): every layer on the CPU"
        return Placement(0, fits=False, reason=reason, cpu_bytes=memory.total, **base)
    host = next((d for d in devices if d.kind == "cpu"), None)
    free = [_free(d, host) for d in gpus]
    room = [max(0, f - margin) for f in free]
    where = " + ".join(d.name for d in gpus)
    have = f"{_gib(sum(free))} free on {where}, {_gib(margin)} of each kept for compute buffers"
    need = sum(sizes)
    at = f"at ctx {memory.ctx}, KV {memory.kv_type}"
    k = n if sum(room) > 0 else 0
    while k > 0 and any(b > r for (_, b), r in zip(split_layers(sizes, k, room), room, strict=True)):
        k -= 1
    split = split_layers(sizes, k, room) if k else [(0, 0)] * len(gpus)
    shares = [Share(d.name, lay, nbytes, f) for d, (lay, nbytes), f in zip(gpus, split, free, strict=True)]
    cpu = memory.input + sum(sizes[: n - k])
    weights = [r / sum(room) for r in room] if k else []
    result = Placement(k, fits=k == n, reason="", shares=shares, cpu_bytes=cpu, tensor_split=weights, **base)
    if k == n:
        blocks = f"{len(memory.layers)} blocks" + (", the MTP block" if memory.mtp else "")
        result.reason = f"every layer ({blocks}, the output) and the KV cache, {_gib(need)} {at}, fit: {have}"
    elif k == 0:
        result.reason = f"not even the output layer ({_gib(sizes[-1])}) fits ({have}): every layer on the CPU"
    else:
        held = "the output" + (", the MTP block" if result.mtp_on_gpu else "")
        result.reason = (
            f"the model needs {_gib(need)} {at}; {have}: the last {k} of {n} layers "
            f"({held}; {_gib(sum(s.bytes for s in shares))}) on the GPU, {n - k} on the CPU"
        )
    return result


def given(
    n_gpu_layers: int,
    devices: list[Device],
    n_trunk: int,
    n_mtp: int,
    *,
    rpc: bool = False,
    auto: bool = False,
) -> Placement:
    """A layer count passed to llama.cpp as it is (-ngl N; with --rpc workers and -ngl auto, every
    layer), and where those layers land."""
    n = n_trunk + n_mtp + 1
    k = min(n_gpu_layers, n)
    flag = "-ngl auto with --rpc" if auto else f"-ngl {n_gpu_layers}"
    which = "every layer" if k == n else f"the last {k} of {n} layers"
    if k == 0:
        reason = f"{flag}: every layer on the CPU"
    elif rpc:
        local = "".join(f" + {d.name}" for d in gpus_of(devices))
        reason = f"{flag}: {which} on the rpc-server workers{local}"
    elif not gpus_of(devices):
        names = ", ".join(sorted({d.name for d in devices})) or "none"
        reason = f"{flag}, but no GPU device (devices: {names}): every layer stays on the CPU"
    else:
        reason = f"{flag} as given: {which} on " + " + ".join(d.name for d in gpus_of(devices))
    fits = k == n and (rpc or bool(gpus_of(devices)))
    setting: int | str = AUTO if auto else n_gpu_layers
    return Placement(n_gpu_layers, n, n_trunk, n_mtp, fits=fits, reason=reason, setting=setting)
