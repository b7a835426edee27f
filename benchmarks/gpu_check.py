"""The real-model path of a Space, end to end on one GPU, with random weights in the full model's shapes.

1. The full InstructBLIP-Vicuna-7B architecture with random weights, saved in Hugging Face format (fp16 safetensors
   and a processor; the tokenizers are word-level stand-ins, as no hub download is possible) to `--work`.
2. A random checkpoint in the authors' LAVIS key format (SAM's patch scorer and exchange layers, with the query
   tokens, projection and ViT norm it also overrides), converted by `python -m sam_core convert` into an upload
   folder.
3. The app's service configured as a Space would be (SAM_MODEL = the saved folder, SAM_ADAPTER = the converted
   file, SAM_QUANTIZATION=auto: 4-bit NF4 for the language model): load, one compare, one Explain (with its HTML
   report), four images, group captioning.
Each step's time and memory (GPU: peak allocated since the step began; CPU: the process's peak RSS) go to a table
and, with --json, to a file.

    python -m benchmarks.gpu_check --work /tmp/gpu_check --json gpu_check.json     # on a GPU
    python -m benchmarks.gpu_check --small --device cpu                            # the same path, tiny, on a CPU
"""

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from app.service import Decoding, SamService
from app.settings import AppSettings
from sam_core.cli import main as sam_cli
from sam_core.data import MiniLinkConfig, make_sample
from sam_core.loading import ADAPTER_FILENAME
from sam_core.configuration import SamConfig
from sam_core.tiny import BASE_WORDS, IMAGE_TOKEN, tiny_config, tiny_processor

from .common import peak_rss_mb, synchronize
from .full_size import full_size_config, random_model

NUM_IMAGES = 4


def save_random_model(folder: Path, depth: int | None, small: bool, device: str) -> tuple[SamConfig, int]:
    """The 7B architecture (or, `small`, the test suite's tiny widths) with random weights and a processor that
    fits it, in Hugging Face format; returns its config and parameter count."""
    processor = tiny_processor(BASE_WORDS, image_size=224, num_query_tokens=32)
    tokenizer = processor.tokenizer
    if small:
        config = tiny_config(processor)
    else:
        config = full_size_config(depth=depth)
        config.image_token_index = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)  # the processor's placeholder id
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            setattr(config.text_config, name, getattr(tokenizer, name))
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = random_model(config, device, dtype)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return config, sum(p.numel() for p in model.parameters())


def random_lavis_checkpoint(path: Path, config: SamConfig) -> None:
    """What the authors release, in their key names: the adapter and the overrides it carries, random."""
    vision, qformer, text = config.vision_config.hidden_size, config.qformer_config.hidden_size, config.text_config.hidden_size
    generator = torch.Generator().manual_seed(0)

    def random(*shape):
        return torch.randn(*shape, generator=generator) * 0.02

    state = {
        "attn.weight": random(1, vision), "attn.bias": random(1),
        "Qformer.bert.encoder.one_2_muliple.0.weight": random(qformer, qformer),
        "Qformer.bert.encoder.one_2_muliple.0.bias": random(qformer),
        "Qformer.bert.encoder.multiple_2_one.0.weight": random(qformer, qformer),
        "Qformer.bert.encoder.multiple_2_one.0.bias": random(qformer),
        "query_tokens": random(1, config.num_query_tokens, qformer),
        "llm_proj.weight": random(text, qformer), "llm_proj.bias": random(text),
        "ln_vision.weight": 1 + random(vision), "ln_vision.bias": random(vision),
    }
    torch.save({"model": state}, path)


@contextmanager
def step(name: str, device: str, record: list):
    """Time a step and its peak memory; appends a row to `record`."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    synchronize()
    start = time.perf_counter()
    yield
    synchronize()
    row = {"step": name, "seconds": time.perf_counter() - start}
    if device.startswith("cuda"):
        row["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        row["gpu_allocated_gib"] = torch.cuda.memory_allocated() / 2**30
    row["process_peak_rss_gib"] = peak_rss_mb() / 1024
    record.append(row)
    print(json.dumps(row), flush=True)


def check(work: Path, depth: int | None, small: bool, device: str, new_tokens: int) -> dict:
    record = []
    model_dir, adapter_dir = work / "instructblip-vicuna-7b-random", work / "sam-adapter"
    with step("save the random model (fp16 on a GPU)", device, record):
        config, parameters = save_random_model(model_dir, depth, small, device)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    with step("convert a random LAVIS-format SAM checkpoint", device, record):
        random_lavis_checkpoint(work / "sam_lavis.pth", config)
        assert sam_cli(["convert", str(work / "sam_lavis.pth"), str(adapter_dir)]) == 0

    settings = dataclasses.replace(AppSettings.from_env(), model=str(model_dir), adapter=str(adapter_dir / ADAPTER_FILENAME),
                                   quantization="auto", device=device)
    with step("load as a Space does (SAM_MODEL, SAM_ADAPTER, quantization auto)", device, record):
        service = SamService(settings)
        service.ready()
    if service.notice:  # the service fell back to the embedded model: the real path failed
        raise RuntimeError(service.notice)
    info = service.loaded.info
    assert info.quantization == "4bit" and not info.guidance_identity, info
    assert set(info.adapter_tensors) >= {"guidance.patch_scorer", "guidance.image_to_context", "language_projection"}

    sample = make_sample(2, 0, MiniLinkConfig(min_images=NUM_IMAGES, max_images=NUM_IMAGES, tasks=("group",)))
    decoding = Decoding(max_new_tokens=new_tokens)
    with step(f"compare: {NUM_IMAGES} images, both answers (greedy, up to {new_tokens} tokens)", device, record):
        state = list(service.compare(sample.images, sample.instruction, decoding))[-1]
    assert state["sam"] is not None and state["baseline"] is not None and not state["cut_short"], state
    with step("Explain: one compare-mode pass, every view and attribution", device, record):
        report = service.explain(sample.images, sample.instruction, decoding)
    with step("Explain: the HTML report and its figures", device, record), tempfile.TemporaryDirectory() as out:
        report.write(Path(out) / "report.html")
    return {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "CPU",
        "torch": torch.__version__, "depth": depth, "small": small, "parameters": parameters, "model": info.to_dict(),
        "answers": {mode: state[mode] for mode in ("sam", "baseline")}, "steps": record,
    }


def table(result: dict) -> str:
    gpu = "gpu_peak_gib" in result["steps"][0]
    lines = ["| step | seconds | " + ("GPU peak (GiB) | GPU held after (GiB) | " if gpu else "") + "process peak RSS (GiB) |",
             "|---|---|" + ("---|---|" if gpu else "") + "---|"]
    for row in result["steps"]:
        memory = f"{row['gpu_peak_gib']:.2f} | {row['gpu_allocated_gib']:.2f} | " if gpu else ""
        lines.append(f"| {row['step']} | {row['seconds']:.1f} | {memory}{row['process_peak_rss_gib']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="folder for the saved model and the adapter (default: a temporary one)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--depth", type=int, default=None, help="cap every stack at this many layers")
    parser.add_argument("--small", action="store_true", help="the test suite's tiny widths: a dry run of the path on a CPU")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_"))
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"{work} is not empty")
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = check(work, args.depth, args.small, args.device, args.new_tokens)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # a full-size model takes 16 GB of disk
    m = result["model"]
    print(f"\n{result['device']}, torch {result['torch']}, {result['parameters']:,} parameters"
          f"{' (tiny widths: a dry run)' if args.small else '' if args.depth is None else f' (stacks capped at {args.depth} layers)'}, "
          f"{m['precision']}, "
          f"weights {m['weights_mb']:,.1f} MB, adapter {m['adapter']}\n")
    print(table(result))
    print(f"\nanswers (random weights, so no meaning): SAM {result['answers']['sam']!r} | baseline {result['answers']['baseline']!r}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
