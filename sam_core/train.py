"""Training: the MiniLINK baseline from scratch (stage 1) and SAM's adapters on a frozen model (stage 2).

Built on Accelerate, so one script runs on a CPU, a GPU, or several with `accelerate launch`:

    python -m sam_core.train --stage baseline --out runs/baseline --steps 2000
    python -m sam_core.train --stage sam --model runs/baseline --out runs/sam --steps 600
    python -m sam_core.train --stage sam --model instructblip-vicuna-7b --quantization 4bit \
        --data my_data/annotations.json --out runs/sam-7b          # SAM adapters of the full model

Stage "vision" comes first for MiniLINK: it pretrains the vision encoder to name the object in every grid cell
(InstructBLIP starts from a pretrained ViT, and a ViT trained only through the answer loss learns colours but
stays blind to shapes); stage "baseline" then keeps it frozen with --freeze-vision.
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data import (
    COLOURS, GRID, LOOKUP, SHAPES, SPLIT_SEEDS, TASKS, TRAINING_TASKS, AnnotationDataset, MiniLink, MiniLinkConfig,
    cell_labels, minilink_vocabulary, read_items,
)
from .loading import ADAPTER_PREFIX, load_sam, save_adapter
from .modeling import SamForConditionalGeneration
from .processing import SamProcessor
from .tiny import tiny_model, tiny_processor

STAGES = ("vision", "baseline", "sam", "full", "joint")


@dataclass
class MiniLinkModelSize:
    """The embedded default's architecture: small enough to train on 2 CPU cores in minutes."""

    num_query_tokens: int = 1  # the tight per-image token budget K
    image_size: int = 64
    vision_width: int = 96
    vision_layers: int = 4
    qformer_width: int = 64
    qformer_layers: int = 2
    cross_attention_frequency: int = 1  # Q-Former layers with cross-attention: every this many (InstructBLIP: 2)
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
            "cross_attention_frequency": size.cross_attention_frequency,
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
    tasks: tuple[str, ...] = TASKS  # MiniLINK tasks to train on; "lookup" adds single-image lookups
    shapes: tuple[str, ...] = SHAPES  # MiniLINK's shape set
    min_objects: int = MiniLinkConfig.min_objects  # objects per image: more of them make one token per image bind
    max_objects: int = MiniLinkConfig.max_objects
    alike: float = MiniLinkConfig.alike
    decoys: bool = MiniLinkConfig.decoys  # version 1: a decoy colour and a decoy shape in every image of a group
    version: int = MiniLinkConfig.version  # MiniLINK version: 2 balanced decoys, 1 the earlier benchmark
    workers: int = 0  # DataLoader processes rendering and preprocessing batches (0: in the training process)
    max_minutes: float | None = None  # a time budget: stop early (and save) when it is spent
    freeze_vision: bool = False  # keep a pretrained vision encoder frozen, as InstructBLIP does
    save_every: int = 500
    log_every: int = 50
    qformer_layers: int = MiniLinkModelSize.qformer_layers  # a fresh model's Q-Former depth
    cross_attention_frequency: int = MiniLinkModelSize.cross_attention_frequency
    size: MiniLinkModelSize | None = None  # architecture of a fresh model; None: the embedded default's with the fields above


def trainable_names(model: nn.Module, stage: str, freeze_vision: bool = False) -> list[str]:
    """Stage vision: the vision encoder (and its recognition heads); sam: only the adapter; baseline: everything
    but SAM's adapter; full and joint: everything (these three without the vision encoder if it is frozen)."""
    names = []
    for name, param in model.named_parameters():
        is_adapter, is_vision = name.startswith(ADAPTER_PREFIX), name.startswith("vision_model.")
        frozen = freeze_vision and is_vision
        train = {
            "vision": is_vision or name.startswith("heads."),
            "baseline": not is_adapter and not frozen,
            "sam": is_adapter,
            "full": not frozen,
            "joint": not frozen,
        }[stage]
        param.requires_grad_(train)
        if train:
            names.append(name)
    return names


@dataclass
class CellRecognitionOutput:
    loss: torch.FloatTensor
    colour_logits: torch.FloatTensor  # (B, cells, colours + 1)
    shape_logits: torch.FloatTensor  # (B, cells, shapes + 1)


class CellRecognition(nn.Module):
    """Stage vision: the vision encoder plus linear heads that name the colour and the shape of the object in
    every grid cell (or "none") from the mean of the cell's patch features. Only the encoder is kept."""

    def __init__(self, vision_model: nn.Module, image_size: int, patch_size: int):
        super().__init__()
        self.vision_model = vision_model
        width = vision_model.config.hidden_size
        self.heads = nn.Linear(width, len(COLOURS) + 1 + len(SHAPES) + 1)
        side = image_size // patch_size
        centres = [(k * patch_size + patch_size // 2) * GRID // image_size for k in range(side)]
        cell_of_patch = torch.tensor([row * GRID + column for row in centres for column in centres])  # (P - 1,)
        one_hot = nn.functional.one_hot(cell_of_patch, GRID * GRID).float()  # (P - 1, cells)
        self.register_buffer("cell_pooling", one_hot / one_hot.sum(0), persistent=False)  # mean over each cell's patches

    def forward(self, pixel_values, colour_labels, shape_labels) -> CellRecognitionOutput:
        patches = self.vision_model(pixel_values=pixel_values).last_hidden_state[:, 1:]  # (B, P - 1, D), no CLS
        cells = torch.einsum("bpd,pc->bcd", patches, self.cell_pooling.to(patches.dtype))  # (B, cells, D)
        colour_logits, shape_logits = self.heads(cells).split([len(COLOURS) + 1, len(SHAPES) + 1], dim=-1)
        loss = nn.functional.cross_entropy(colour_logits.flatten(0, 1), colour_labels.flatten()) + nn.functional.cross_entropy(
            shape_logits.flatten(0, 1), shape_labels.flatten()
        )
        return CellRecognitionOutput(loss, colour_logits, shape_logits)


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


class CellCollator:
    """Single MiniLINK images → pixel values and per-cell colour/shape targets (stage vision)."""

    def __init__(self, dataset: MiniLink, processor: SamProcessor):
        self.dataset, self.processor = dataset, processor

    def __call__(self, indices: list[int]):
        samples = [self.dataset[index] for index in indices]
        pixels = self.processor.image_processor([s.images[0] for s in samples], return_tensors="pt")["pixel_values"]
        colours, shapes = zip(*(cell_labels(s.scenes[0]) for s in samples))
        return {"pixel_values": pixels, "colour_labels": torch.tensor(colours), "shape_labels": torch.tensor(shapes)}


@torch.no_grad()
def cell_accuracy(recognition: CellRecognition, processor: SamProcessor, config: MiniLinkConfig, size: int = 512) -> dict[str, float]:
    """Held-out (dev split) accuracy (%) of the stage-vision heads on the cells that hold an object."""
    dataset = MiniLink(SPLIT_SEEDS["dev"], size, replace(config, tasks=(LOOKUP,)))
    device = next(recognition.parameters()).device
    collate = CellCollator(dataset, processor)
    correct, total = {"colour": 0, "shape": 0}, 0
    for start in range(0, size, 128):
        batch = {k: v.to(device) for k, v in collate(list(range(start, min(size, start + 128)))).items()}
        output = recognition(**batch)
        occupied = batch["shape_labels"] < len(SHAPES)
        total += int(occupied.sum())
        for name, logits in (("colour", output.colour_logits), ("shape", output.shape_logits)):
            correct[name] += int((logits.argmax(-1) == batch[f"{name}_labels"])[occupied].sum())
    return {name: 100.0 * value / total for name, value in correct.items()}


class Collator:
    """Samples → a training batch (images, prompt, answer); MiniLINK samples or (paths, prompt, answer) records."""

    def __init__(self, dataset, processor: SamProcessor):
        self.dataset, self.processor = dataset, processor

    def __call__(self, indices: list[int]):
        image_sets, prompts, answers, _ = read_items(self.dataset, indices)
        return self.processor(image_sets, prompts, answers)


def open_dataset(config: TrainConfig):
    if config.stage == "vision" and config.data != "minilink":
        raise ValueError("stage 'vision' pretrains on MiniLINK's scenes (it needs their per-cell objects): use --data minilink")
    if config.data == "minilink":
        tasks = (LOOKUP,) if config.stage == "vision" else tuple(config.tasks)  # stage vision: single images
        minilink = MiniLinkConfig(min_images=config.min_images, max_images=config.max_images, tasks=tasks,
                                  shapes=tuple(config.shapes), min_objects=config.min_objects,
                                  max_objects=config.max_objects, alike=config.alike, decoys=config.decoys,
                                  version=config.version)
        return MiniLink(SPLIT_SEEDS["train"], config.train_size, minilink)
    return AnnotationDataset(config.data)


def open_model(config: TrainConfig) -> tuple[SamForConditionalGeneration, SamProcessor]:
    overrides = {k: v for k, v in {"context": config.context, "exchange_layer": config.exchange_layer}.items() if v is not None}
    if config.model is None:
        if config.stage not in ("vision", "baseline"):
            raise ValueError(f"stage {config.stage!r} starts from a trained model: pass --model")
        size = config.size or MiniLinkModelSize(num_query_tokens=config.num_query_tokens, qformer_layers=config.qformer_layers,
                                                cross_attention_frequency=config.cross_attention_frequency)
        return build_minilink_model(size, config.seed, **overrides)
    dtype = torch.float32 if config.quantization == "none" else None  # a full-precision model trains in fp32 on a GPU too
    loaded = load_sam(config.model, quantization=config.quantization, device="cpu" if not torch.cuda.is_available() else "auto",
                      dtype=dtype, **overrides)
    model = loaded.model
    if config.quantization in ("4bit", "8bit"):
        model.guidance.float()  # fp32 adapters over a frozen quantised LLM
    return model, loaded.processor


def save_model(model, processor: SamProcessor, out: Path, config: "TrainConfig") -> None:
    """The adapter always; the whole model only in full precision (quantised weights are never saved:
    bitsandbytes re-orders 4-bit weights after a CPU forward pass, so they would reload wrongly)."""
    if config.stage not in ("vision", "baseline"):
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
    if config.stage == "vision":
        vision = model.config.vision_config
        trainee, collate = CellRecognition(model.vision_model, vision.image_size, vision.patch_size), CellCollator(dataset, processor)
    else:
        trainee, collate = model, Collator(dataset, processor)
    names = trainable_names(trainee, config.stage, config.freeze_vision)
    params = [p for p in trainee.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, config.warmup, config.steps))
    trainee, optimizer = accelerator.prepare(trainee, optimizer)

    state_path = out / "train_state.pt"
    step, epoch, position, log = 0, 0, 0, {"config": asdict(config), "trainable_parameters": sum(p.numel() for p in params), "loss": []}
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        accelerator.unwrap_model(trainee).load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, epoch, position, log = state["step"], state["epoch"], state["position"], json.loads(state["log"])
        accelerator.print(f"resuming at step {step}")

    guidance_draws = random.Random(f"guidance-{config.seed}-{step}")
    trainee.train()
    start, running = time.perf_counter() - log.get("seconds", 0.0), []
    cpu_start = time.process_time() - log.get("cpu_seconds", 0.0)  # far below the wall time when the cores are shared
    progress = tqdm(total=config.steps, initial=step, disable=not accelerator.is_local_main_process, desc=config.stage)
    while step < config.steps and not out_of_time(start, config.max_minutes):
        batches = batch_indices(dataset, config.batch_size, config.seed, epoch)
        loader = accelerator.prepare(DataLoader(batches[position:], batch_size=None, collate_fn=collate, num_workers=config.workers))
        for batch in loader:
            position += 1
            guidance = config.stage in ("sam", "full") or (config.stage == "joint" and guidance_draws.random() < 0.5)
            loss = trainee(**batch).loss if config.stage == "vision" else trainee(**batch, guidance=guidance).loss
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
                log["seconds"], log["cpu_seconds"] = time.perf_counter() - start, time.process_time() - cpu_start
                if accelerator.is_main_process:
                    trained = {k: v for k, v in accelerator.unwrap_model(trainee).state_dict().items() if k in set(names)}
                    torch.save(
                        {"model": trained, "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                         "step": step, "epoch": epoch, "position": position, "log": json.dumps(log)},
                        state_path,
                    )
            if step >= config.steps or out_of_time(start, config.max_minutes):
                break
        else:
            epoch, position = epoch + 1, 0
    progress.close()
    if step < config.steps:
        log["stopped_early"] = {"step": step, "max_minutes": config.max_minutes}
        accelerator.print(f"time budget of {config.max_minutes} min spent: stopped at step {step} of {config.steps}")
    log["seconds"], log["cpu_seconds"] = time.perf_counter() - start, time.process_time() - cpu_start
    if config.stage == "vision":
        log["cell_accuracy"] = cell_accuracy(accelerator.unwrap_model(trainee).eval(), processor, dataset.config)
        accelerator.print(f"held-out cell accuracy: {log['cell_accuracy']}")
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model).eval()
        save_model(unwrapped, processor, out, config)
        (out / "training_log.json").write_text(json.dumps(log, indent=1))
    return log


def out_of_time(start: float, max_minutes: float | None) -> bool:
    return max_minutes is not None and time.perf_counter() - start > 60 * max_minutes


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
    for name in ("train_size", "steps", "batch_size", "warmup", "seed", "num_query_tokens", "exchange_layer", "qformer_layers",
                 "cross_attention_frequency", "min_images", "max_images", "min_objects", "max_objects", "workers", "save_every",
                 "log_every"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TRAINING_TASKS)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop early (and save) after this long")
    parser.add_argument("--freeze-vision", action="store_true", help="keep the vision encoder frozen")
    parser.add_argument("--decoys", action="store_true", help="MiniLINK version 1: a decoy colour and a decoy shape in every image")
    parser.add_argument("--version", type=int, default=MiniLinkConfig.version, choices=(1, 2),
                        help="MiniLINK version: 2 balanced decoys (default), 1 the earlier benchmark")
    for name in ("lr", "weight_decay", "alike"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    log = train(TrainConfig(**vars(parser.parse_args(argv))))
    last = f"last loss {log['loss'][-1]['loss']:.4f}" if log["loss"] else "no step taken"
    print(f"trained {log['trainable_parameters']} parameters in {log['seconds']:.0f} s; {last}")


if __name__ == "__main__":
    main()
