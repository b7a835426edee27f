"""The benchmark suite's own logic: the memory model against a measured GPU run, the in-place NF4 swap the GPU
benchmark relies on, and one end-to-end measurement (so the scripts cannot rot unnoticed)."""

import json
from pathlib import Path

import pytest
import torch

from benchmarks import memory
from benchmarks.full_size import quantize_language_model

GPU_RUN = Path(__file__).resolve().parent.parent / "docs" / "gpu_h100.json"


@pytest.fixture(scope="module")
def sizes():
    return memory.module_sizes()


def test_meta_instantiation_has_the_7b_models_size(sizes):
    total = sizes.quantizable + sizes.kept_16bit
    assert 7.85e9 < total < 7.95e9  # InstructBLIP-Vicuna-7B: 7.9 B parameters
    assert sizes.quantizable == 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)  # the decoder's q,k,v,o + MLP


def test_memory_estimate_matches_the_measured_gpu_run(sizes):
    run = json.loads(GPU_RUN.read_text())
    for row in run["rows"]:
        estimate = memory.peak_bytes(sizes, row["precision"], row["images"], row["new_tokens"], sequences=2) / memory.GIB
        assert estimate == pytest.approx(row["peak_gib"], rel=0.04), row


def test_memory_grows_with_images_and_sequences_and_shrinks_with_quantisation(sizes):
    peaks = {p: [memory.peak_bytes(sizes, p, n, 256) for n in (1, 4, 16)] for p in memory.PRECISIONS}
    for values in peaks.values():
        assert values == sorted(values) and values[0] < values[-1]
    assert peaks["nf4"][0] < peaks["int8"][0] < peaks["fp16"][0]
    assert memory.peak_bytes(sizes, "nf4", 4, 256, sequences=10) > memory.peak_bytes(sizes, "nf4", 4, 256, sequences=2)
    assert memory.smallest_card(6.0) == "T4" and memory.smallest_card(15.0) == "L4/A10G"


@pytest.mark.parametrize("bits", [4, 8])
def test_bitsandbytes_swap_quantises_every_llm_linear_but_lm_head(make_model, processor, three_images, bits):
    import bitsandbytes as bnb

    model = make_model(active=True)
    inputs = processor(three_images, "what is shared ?")
    reference = model(**inputs).logits
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.language_model.modules()) - 1
    assert quantize_language_model(model, bits, torch.float32) == linears
    kind = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    assert sum(isinstance(m, kind) for m in model.language_model.modules()) == linears
    assert not isinstance(model.language_model.get_output_embeddings(), kind)
    quantised = model(**inputs).logits
    assert torch.corrcoef(torch.stack([reference.flatten(), quantised.flatten()]))[0, 1] > 0.9
    assert model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, new_tokens_only=True).shape[1] == 3


def test_end_to_end_benchmark_measures_both_modes_on_the_embedded_default():
    from benchmarks.end_to_end import measure

    threads = torch.get_num_threads()
    try:
        row = measure("fp32", 1, repeats=1)
    finally:
        torch.set_num_threads(threads)
    timings = ("sam_ttft", "sam_total", "baseline_ttft", "baseline_total", "compare_ttft", "compare_total", "compare_in_turn")
    assert all(0 < row[name] < 60 for name in timings)  # one repeat on a shared machine: no order between them
    assert row["precision"] == "fp32" and row["peak_rss_mb"] >= row["rss_loaded_mb"] > 0


def test_quantization_benchmark_pairs_the_precisions_on_the_same_samples(one_thread):
    from benchmarks.quantization import memory, score_rows, score_table

    rows = score_rows(None, size=6, version=2)
    used = memory(None, "nf4", 1, version=2)
    assert {(r["task"], r["mode"]) for r in rows} <= {(t, m) for t in ("group", "story", "question") for m in ("sam", "baseline")}
    assert sum(r["n"] for r in rows) == 2 * 6 and all(0 <= r["identical"] <= r["n"] for r in rows)
    for r in rows:
        low, high = r["difference_ci"]
        assert low <= r["difference"] <= high and r["difference"] == r["accuracy_nf4"] - r["accuracy_fp32"]
    assert score_table(rows).count("\n") == len(rows) + 1
    assert used["precision_in_use"].startswith("4-bit NF4") and used["peak_rss_mb"] >= used["rss_loaded_mb"] > 0


def test_gpu_check_runs_the_space_path_end_to_end(tmp_path, one_thread):
    """The GPU check's own code, at the test suite's tiny widths on the CPU: save, convert, load as a Space, answer."""
    from benchmarks.gpu_check import check, table

    result = check(tmp_path, depth=None, small=True, device="cpu", new_tokens=2)
    assert result["model"]["quantization"] == "4bit" and result["model"]["adapter"] == "sam_adapter.safetensors"
    assert result["model"]["adapter_tensors"]["guidance.patch_scorer"] == 2 and not result["model"]["guidance_identity"]
    assert [row["step"].split(":")[0] for row in result["steps"]][-3:] == ["compare", "Explain", "Explain"]
    assert table(result).count("\n") == len(result["steps"]) + 1
