"""``train.precision=auto`` (``kgdistill.runtime``): chosen from the CPU's bf16 flags, or where they cannot be read
from a matmul probe cached per machine."""
from __future__ import annotations


def test_auto_precision_follows_the_cpu_flags(monkeypatch):
    from kgdistill import runtime

    for flags, expected in ((["avx512f"], "fp32"), (["avx512f", "avx512_bf16"], "bf16"), (["amx_bf16"], "bf16")):
        runtime._resolve.cache_clear()
        runtime.cpu_native_bf16.cache_clear()
        monkeypatch.setattr(runtime, "cpu_info", lambda flags=flags: {"model": "test cpu", "flags": flags,
                                                                       "native_bf16": any(f in flags for f in runtime.NATIVE_BF16_FLAGS)})
        assert runtime.resolve_precision("auto", "cpu") == expected
        assert runtime.resolve_precision("fp32", "cpu") == "fp32"
        assert runtime.resolve_precision("bf16", "cpu") == "bf16"
        info = runtime.precision_info("auto", "cpu")
        assert info["chosen"] == expected and info["cpu"]["model"] == "test cpu"
    runtime._resolve.cache_clear()
    runtime.cpu_native_bf16.cache_clear()


def test_unreadable_flags_fall_back_to_a_cached_probe(monkeypatch, tmp_path):
    from kgdistill import runtime

    runtime._resolve.cache_clear()
    runtime.cpu_native_bf16.cache_clear()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(runtime, "cpu_info", lambda: {"model": "mystery", "flags": [], "native_bf16": None})
    calls = []
    monkeypatch.setattr(runtime, "probe_cpu_bf16", lambda: calls.append(1) or {"fp32_s": 1.0, "bf16_s": 2.0,
                                                                              "native_bf16": False})
    assert runtime.resolve_precision("auto", "cpu") == "fp32"
    runtime.cpu_native_bf16.cache_clear()
    runtime._resolve.cache_clear()
    assert runtime.resolve_precision("auto", "cpu") == "fp32"
    assert calls == [1]  # the second process-level lookup read the cache
    assert "mystery" in (tmp_path / "kgdistill/precision-probe.json").read_text()
    runtime._resolve.cache_clear()
    runtime.cpu_native_bf16.cache_clear()
