"""Training: the MiniLINK baseline from scratch (stage 1) and SAM's adapters on a frozen model (stage 2).

Built on Accelerate, so one script runs on a CPU, a GPU, or several with `accelerate launch`:

    python -m sam_core.train --stage baseline --out runs/baseline --steps 2000
    python -m sam_core.train --stage sam --model runs/baseline --out runs/sam --steps 600
    python -m sam_core.train --stage sam --model instructblip-vicuna-7b --quantization 4bit \
        --data my_data/annotations.json --out runs/sam-7b          # SAM adapters of the full model

Stage "sam" is the paper's recipe: everything frozen but the patch scorer and the two exchange layers
(answer-only LM loss). Stage "full" trains everything, guidance included, for comparison. Stage "joint"
trains everything with guidance on for a random half of the batches, so one set of weights is trained for both
modes and SAM vs baseline compares the two modes at equal training.
Runs resume from `OUT/train_state.pt` when it exists.
"""

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data import AnnotationDataset, MiniLink, MiniLinkConfig, SPLIT_SEEDS, minilink_vocabulary, read_items
from .loading import ADAPTER_PREFIX, load_sam, save_adapter
from .modeling import SamForConditionalGeneration
from .processing import SamProcessor
from .tiny import tiny_model, tiny_processor

STAGES = ("baseline", "sam", "full", "joint")


@dataclass
class MiniLinkModelSize:
    """The embedded default's architecture: small enough to train on 2 CPU cores in minutes."""

    num_query_tokens: int = 1  # the tight per-image token budget K
    image_size: int = 64
    vision_width: int = 96
    vision_layers: int = 4
    qformer_width: int = 64
    qformer_layers: int = 2
    llm_width: int = 128
    llm_layers: int = 2


def build_minilink_model(size: MiniLinkModelSize, seed: int, **config) -> tuple[SamForConditionalGeneration, SamProcessor]:
    processor = tiny_processor(minilink_vocabulary(), size.image_size, size.num_query_tokens)
    model = tiny_model(
        processor,
        seed=seed,
        vision_config={
            "hidden_size": size.vision_width, "intermediate_size": 2 * size.vision_width,
            "num_hidden_layers": size.vision_layers, "num_attention_heads": 4, "patch_size": 8,
        },
        qformer_config={
            "hidden_size": size.qformer_width, "intermediate_size": 2 * size.qformer_width,
            "num_hidden_layers": size.qformer_layers, "num_attention_heads": 4,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        },
        text_config={
            "hidden_size": size.llm_width, "intermediate_size": 2 * size.llm_width,
            "num_hidden_layers": size.llm_layers, "num_attention_heads": 4, "num_key_value_heads": 4,
        },
        **config,
    )
    return model, SamProcessor(processor)


@dataclass
class TrainConfig:
    stage: str
    out: str
    model: str | None = None  # None: a fresh MiniLINK model (stage "baseline" only)
    data: str = "minilink"  # "minilink" or an annotations.json in the authors' schema
    train_size: int = 200_000
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    num_query_tokens: int = MiniLinkModelSize.num_query_tokens
    context: str | None = None
    exchange_layer: int | None = None
    quantization: str = "none"
    min_images: int = MiniLinkConfig.min_images
    max_images: int = MiniLinkConfig.max_images
    save_every: int = 500
    log_every: int = 50
    size: MiniLinkModelSize | None = None  # architecture of a fresh model; None: the embedded default's


def trainable_names(model: SamForConditionalGeneration, stage: str) -> list[str]:
    """Stage baseline: everything but SAM's adapter; sam: only the adapter; full and joint: everything."""
    names = []
    for name, param in model.named_parameters():
        is_adapter = name.startswith(ADAPTER_PREFIX)
        train = {"baseline": not is_adapter, "sam": is_adapter, "full": True, "joint": True}[stage]
        param.requires_grad_(train)
        if train:
            names.append(name)
    return names


def batch_indices(dataset, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled batches whose samples share the same number of images (SAM's inputs are (B, N, …))."""
    rng = random.Random(f"{seed}-{epoch}")
    by_count: dict[int, list[int]] = {}
    for index in range(len(dataset)):
        by_count.setdefault(dataset.num_images(index), []).append(index)
    batches = []
    for indices in by_count.values():
        rng.shuffle(indices)
        batches += [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    rng.shuffle(batches)
    return batches


class Collator:
    """Samples → a training batch (images, prompt, answer); MiniLINK samples or (paths, prompt, answer) records."""

    def __init__(self, dataset, processor: SamProcessor):
        self.dataset, self.processor = dataset, processor

    def __call__(self, indices: list[int]):
        image_sets, prompts, answers, _ = read_items(self.dataset, indices)
        return self.processor(image_sets, prompts, answers)


def open_dataset(config: TrainConfig):
    if config.data == "minilink":
        minilink = MiniLinkConfig(min_images=config.min_images, max_images=config.max_images)
        return MiniLink(SPLIT_SEEDS["train"], config.train_size, minilink)
    return AnnotationDataset(config.data)


def open_model(config: TrainConfig) -> tuple[SamForConditionalGeneration, SamProcessor]:
    overrides = {k: v for k, v in {"context": config.context, "exchange_layer": config.exchange_layer}.items() if v is not None}
    if config.model is None:
        if config.stage != "baseline":
            raise ValueError("stages 'sam' and 'full' start from a trained model: pass --model")
        size = config.size or MiniLinkModelSize(num_query_tokens=config.num_query_tokens)
        return build_minilink_model(size, config.seed, **overrides)
    loaded = load_sam(config.model, quantization=config.quantization, device="cpu" if not torch.cuda.is_available() else "auto", **overrides)
    model = loaded.model
    if config.quantization in ("4bit", "8bit"):
        model.guidance.float()  # fp32 adapters over a frozen quantised LLM
    return model, loaded.processor


def save_model(model, processor: SamProcessor, out: Path, config: "TrainConfig") -> None:
    """The adapter always; the whole model only in full precision (quantised weights are never saved:
    bitsandbytes re-orders 4-bit weights after a CPU forward pass, so they would reload wrongly)."""
    if config.stage != "baseline":
        save_adapter(model, out / "sam_adapter.safetensors")
    if config.quantization in ("none", "auto") and not getattr(model, "is_quantized", False):
        model.save_pretrained(out)
        processor.save_pretrained(out)


def train(config: TrainConfig) -> dict:
    """Train one stage; returns (and writes to OUT/training_log.json) the loss curve, time and settings."""
    if config.stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    accelerator = Accelerator()
    dataset = open_dataset(config)
    model, processor = open_model(config)
    names = trainable_names(model, config.stage)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, config.warmup, config.steps))
    model, optimizer = accelerator.prepare(model, optimizer)

    state_path = out / "train_state.pt"
    step, epoch, position, log = 0, 0, 0, {"config": asdict(config), "trainable_parameters": sum(p.numel() for p in params), "loss": []}
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        accelerator.unwrap_model(model).load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, epoch, position, log = state["step"], state["epoch"], state["position"], json.loads(state["log"])
        accelerator.print(f"resuming at step {step}")

    guidance_draws = random.Random(f"guidance-{config.seed}-{step}")
    collate = Collator(dataset, processor)
    model.train()
    start, running = time.perf_counter() - log.get("seconds", 0.0), []
    progress = tqdm(total=config.steps, initial=step, disable=not accelerator.is_local_main_process, desc=config.stage)
    while step < config.steps:
        batches = batch_indices(dataset, config.batch_size, config.seed, epoch)
        loader = accelerator.prepare(DataLoader(batches[position:], batch_size=None, collate_fn=collate))
        for batch in loader:
            position += 1
            guidance = config.stage in ("sam", "full") or (config.stage == "joint" and guidance_draws.random() < 0.5)
            loss = model(**batch, guidance=guidance).loss
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            running.append(loss.item())
            progress.update(1)
            if step % config.log_every == 0 or step == config.steps:
                log["loss"].append({"step": step, "loss": sum(running) / len(running)})
                progress.set_postfix(loss=f"{log['loss'][-1]['loss']:.3f}")
                running = []
            if step % config.save_every == 0 or step == config.steps:
                log["seconds"] = time.perf_counter() - start
                if accelerator.is_main_process:
                    trained = {k: v for k, v in accelerator.unwrap_model(model).state_dict().items() if k in set(names)}
                    torch.save(
                        {"model": trained, "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                         "step": step, "epoch": epoch, "position": position, "log": json.dumps(log)},
                        state_path,
                    )
            if step >= config.steps:
                break
        else:
            epoch, position = epoch + 1, 0
    progress.close()
    log["seconds"] = time.perf_counter() - start
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model).eval()
        save_model(unwrapped, processor, out, config)
        (out / "training_log.json").write_text(json.dumps(log, indent=1))
    return log


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = TrainConfig(stage="baseline", out="")
    parser.add_argument("--stage", choices=STAGES, required=True)
    parser.add_argument("--out", required=True)
    for name in ("model", "data", "context", "quantization"):
        parser.add_argument(f"--{name.replace('_', '-')}", default=getattr(defaults, name))
    for name in ("train_size", "steps", "batch_size", "warmup", "seed", "num_query_tokens", "exchange_layer",
                 "min_images", "max_images", "save_every", "log_every"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("lr", "weight_decay"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    log = train(TrainConfig(**vars(parser.parse_args(argv))))
    print(f"trained {log['trainable_parameters']} parameters in {log['seconds']:.0f} s; last loss {log['loss'][-1]['loss']:.4f}")


if __name__ == "__main__":
    main()
