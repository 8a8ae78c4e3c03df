"""Shared pytest fixtures, grouped by the part of qwythos they serve. Built once per session."""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With QWYTHOS_NO_SKIPS=1 (set by .ci/run, which installs every extra) a skip is a failure:
    a missing reference tool must not silently turn the reference checks off."""
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and os.environ.get("QWYTHOS_NO_SKIPS") == "1" and not hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        rep.longrepr = f"skipped under QWYTHOS_NO_SKIPS=1: {rep.longrepr}"


def pytest_configure(config):
    """The suite never writes the user's caches (session fixtures included): every cache the code
    keeps (probe and batched-logits verdicts, draft costs, Hub heads, RPC tensors) lives under
    QWYTHOS_CACHE (core/fileio.cache_dir), pointed here at a folder removed at the end."""
    import shutil
    import tempfile

    from qwythos.testing import reference

    # the llama.cpp source install.sh unpacked lives in the user's cache folder: found before the
    # suite points the cache elsewhere
    os.environ.setdefault(reference.ENV_VAR, str(reference.default_source()))
    folder = tempfile.mkdtemp(prefix="qwythos-test-cache-")
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
    os.environ["QWYTHOS_CACHE"] = folder
    os.environ["QWYTHOS_DRAFT_COSTS"] = os.path.join(folder, "draft_costs.json")


@pytest.fixture(autouse=True)
def draft_cost_cache(tmp_path, monkeypatch):
    """Each test starts without cached draft costs: what one test's runs keep is not another's.
    The path of this test's cache."""
    path = tmp_path / "draft_costs.json"
    monkeypatch.setenv("QWYTHOS_DRAFT_COSTS", str(path))
    return path


# ---- fixtures: base
@pytest.fixture(scope="session")
def tiny_mtp_dir(tmp_path_factory):
    """Tiny Qwen3.5 HF folder in the base-model layout: config with one MTP layer + mtp.* tensors."""
    from qwythos.testing.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-mtp"), variant="mtp")


@pytest.fixture(scope="session")
def tiny_nomtp_dir(tmp_path_factory):
    """Tiny Qwen3.5 HF folder without any MTP layer (config and tensors)."""
    from qwythos.testing.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-nomtp"), variant="no-mtp")


@pytest.fixture(scope="session")
def tiny_qwythos_dir(tmp_path_factory):
    """Tiny folder shaped like the Qwythos release: config promises 1 MTP layer, no mtp.* tensors."""
    from qwythos.testing.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwythos"), variant="qwythos")


# ---- end: base


# ---- fixtures: converter
@pytest.fixture(scope="session")
def tiny_mtp_gguf(tiny_mtp_dir, tmp_path_factory):
    """Our converter's BF16 GGUF of tiny_mtp_dir, MTP head included (blk.N.nextn.*)."""
    from qwythos.convert.text import convert

    return convert(tiny_mtp_dir, tmp_path_factory.mktemp("conv-mtp") / "tiny-mtp-BF16.gguf").output


@pytest.fixture(scope="session")
def tiny_trunk_gguf(tiny_mtp_dir, tmp_path_factory):
    """The same checkpoint converted without its head (what the Qwythos release converts to)."""
    from qwythos.convert.text import convert

    out = tmp_path_factory.mktemp("conv-trunk") / "tiny-trunk-BF16.gguf"
    return convert(tiny_mtp_dir, out, mtp=False).output


# ---- end: converter


# ---- fixtures: export
@pytest.fixture
def mtp_gguf(tmp_path):
    """A header-only qwen35 GGUF stub named like the Q4_K_M release, with an MTP head declared."""
    from qwythos.core.model import release
    from qwythos.testing import stubs

    return stubs.write_stub_gguf(tmp_path / release.gguf_file_name("Q4_K_M", mtp=True))


@pytest.fixture
def trunk_gguf(tmp_path):
    """The same stub without the head."""
    from qwythos.core.model import release
    from qwythos.testing import stubs

    return stubs.write_stub_gguf(tmp_path / release.gguf_file_name("Q4_K_M"), nextn_layers=0)


@pytest.fixture(scope="session")
def export_real_gguf(request, tmp_path_factory):
    """kind -> a real qwen35 GGUF for the export tests, built once per session.

    "mtp" / "trunk": the converter's tiny_mtp_gguf / tiny_trunk_gguf when conftest has them, else
    llama.cpp's reference converter on tiny_mtp_dir (with --no-mtp for "trunk").
    "qwythos-ref": the reference converter's file for the Qwythos layout (declares a head it lacks).
    """
    cache: dict[str, object] = {}

    def get(kind: str):
        if kind in cache:
            return cache[kind]
        fixture = {"mtp": "tiny_mtp_gguf", "trunk": "tiny_trunk_gguf"}.get(kind)
        if fixture:
            try:
                cache[kind] = request.getfixturevalue(fixture)
                return cache[kind]
            except pytest.FixtureLookupError:
                pass
        from qwythos.testing.reference import reference_available, run_reference_converter

        if not reference_available():
            pytest.skip("llama.cpp's reference converter is not available")
        src = request.getfixturevalue("tiny_qwythos_dir" if kind == "qwythos-ref" else "tiny_mtp_dir")
        out = tmp_path_factory.mktemp(f"export-{kind}") / f"tiny-{kind}-BF16.gguf"
        extra = ["--no-mtp"] if kind == "trunk" else []
        cache[kind] = run_reference_converter(src, out, extra_args=extra)
        return cache[kind]

    return get


# ---- end: export


# ---- fixtures: mtp
TRAINED_DIR = __import__("pathlib").Path(__file__).resolve().parents[1] / "data" / "tiny-trained"
OTHER_HEAD_DIR = TRAINED_DIR.with_name("tiny-trained-other")


@pytest.fixture(scope="session")
def mtp_fixture_ggufs(tiny_mtp_gguf, tiny_trunk_gguf):
    """{"full": converter output with the head, "trunk": the same without it} for tiny_mtp_dir."""
    return {"full": tiny_mtp_gguf, "trunk": tiny_trunk_gguf}


@pytest.fixture(scope="session")
def trained_dir():
    """The committed trained tiny model (HF layout, with a working MTP head; scripts/train_tiny.py)."""
    return TRAINED_DIR


@pytest.fixture(scope="session")
def other_head_dir():
    """The head of a differently seeded training run (config, index and only the mtp.* shard)."""
    return OTHER_HEAD_DIR


@pytest.fixture(scope="session")
def trained_ggufs(tmp_path_factory):
    """{"full", "trunk", "separate", "wrong"} GGUFs of the trained model (wrong: other seed's head)."""
    from qwythos.convert.text import convert
    from qwythos.mtp.restore import restore

    d = tmp_path_factory.mktemp("mtp-trained-gguf")
    trunk = convert(TRAINED_DIR, d / "trained-trunk-BF16.gguf", mtp=False).output
    return {
        "full": convert(TRAINED_DIR, d / "trained-BF16.gguf").output,
        "trunk": trunk,
        "separate": restore(trunk, TRAINED_DIR, d / "mtp-trained-BF16.gguf", separate=True).output,
        "wrong": restore(trunk, OTHER_HEAD_DIR, d / "trained-wrong-head.gguf").output,
    }


# ---- end: mtp


# ---- fixtures: runtime
@pytest.fixture(scope="session")
def rt_trained_gguf(trained_ggufs):
    """BF16 GGUF (with its trained MTP head) of the bundled data/tiny-trained model."""
    return trained_ggufs["full"]


@pytest.fixture(scope="session")
def rt_trained_trunk_gguf(trained_ggufs):
    """The trained tiny model without its head."""
    return trained_ggufs["trunk"]


@pytest.fixture(scope="session")
def rt_trained_model(rt_trained_gguf):
    """The trained tiny model loaded once (with its MTP layer)."""
    from qwythos.core.llamacpp.handles import load_model

    m = load_model(rt_trained_gguf)
    yield m
    m.close()


@pytest.fixture(scope="session")
def rt_trained_f32_model(tmp_path_factory):
    """The trained tiny model in F32 (BF16 near-ties can flip between batched and single kernels)."""
    from qwythos.convert.text import convert
    from qwythos.core.llamacpp.handles import load_model

    out = tmp_path_factory.mktemp("rt-f32") / "trained-F32.gguf"
    m = load_model(convert(TRAINED_DIR, out, outtype="f32").output)
    yield m
    m.close()


# ---- end: runtime
