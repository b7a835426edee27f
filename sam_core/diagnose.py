"""Why the paper's recipe learns or not on MiniLINK: its first steps, measured.

    python -m sam_core.diagnose --model runs/base --out runs/diagnose/lr3e-3 --steps 400 --lr 3e-3
    python -m sam_core.diagnose --model runs/base --out runs/diagnose/oracle --oracle --steps 400
    python -m sam_core.diagnose --plot runs/diagnose/lr3e-3 runs/diagnose/oracle --out docs/minilink_recipe.png

Trains what the paper's recipe trains (`--stage sam`: the patch scorer and the two exchange layers over a frozen
model; same data, loss, optimiser, warm-up and clipping as `sam_core.train`) and records at every step the
gradient norm of the scorer and of both exchange layers, and every `--probe-every` steps the loss on fixed dev
batches with guidance on and with guidance off (the same weights, the same batches: guidance helps where the
first is lower). At the end it measures dev task accuracy in both modes.

With --oracle the context image is not pooled by the scorer: it is the linked object alone (drawn on its own
at its place in the first image), so stream B sees exactly what links the images. If guidance does not help
even then, the exchange cannot hand the linked object to a frozen rest of the model that can use it.
"""

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .data import SPLIT_SEEDS, TASKS, MiniLink, MiniLinkSample, read_items, render_scene
from .evaluate import Prediction, answer_is_correct
from .generation import generation_kwargs
from .modeling import SamGuidance
from .train import Collator, TrainConfig, batch_indices, open_dataset, open_model, trainable_names, warmup_cosine

MODULES = ("patch_scorer", "image_to_context", "context_to_image")


class OracleContext(SamGuidance):
    """SAM's guidance with the context image given (`oracle`, (B, P, D) patch features) instead of pooled."""

    oracle: torch.Tensor | None = None

    def context_features(self, patch_features, context):
        if context != "all":
            raise ValueError("the oracle probe replaces the one shared context image: context 'all'")
        batch, num_images, patches = patch_features.shape[:3]
        uniform = patch_features.new_full((batch, num_images, patches), 1 / num_images)
        return uniform, self.oracle.to(patch_features.dtype)  # (B, N, P), (B, P, D)


def linked_alone(sample: MiniLinkSample, size: int):
    """The linked object drawn alone, where it sits in the first image, on a fresh MiniLINK background."""
    linked = next(obj for obj in sample.scenes[0] if obj.name == sample.linked)
    return render_scene(random.Random(f"oracle-{sample.id}"), [linked], size)


@dataclass
class DiagnoseConfig:
    model: str
    out: str
    steps: int = 400
    lr: float = 3e-3
    warmup: int = 50
    batch_size: int = 32
    context: str = "all"
    exchange_layer: int | None = None
    oracle: bool = False
    probe_every: int = 25
    probe_batches: int = 4  # fixed dev batches for the guidance on / off loss
    eval_size: int = 300  # dev samples for the final accuracy
    seed: int = 0
    version: int = 2


class Probe:
    """Guidance on/off losses and accuracies of a model on dev data, with the oracle context when asked."""

    def __init__(self, model, processor, oracle: bool):
        self.model, self.processor, self.oracle = model, processor, oracle

    def set_oracle(self, samples: list[MiniLinkSample]) -> None:
        if self.oracle:
            images = [linked_alone(s, s.images[0].width) for s in samples]
            pixels = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]  # (B, 3, H, W)
            with torch.no_grad():
                self.model.guidance.oracle = self.model.encode_images(pixels.unsqueeze(1).to(self.model.query_tokens.device))[:, 0]

    @torch.no_grad()
    def losses(self, dataset, batches) -> dict[str, float]:
        self.model.eval()
        totals = {"on": 0.0, "off": 0.0}
        for indices in batches:
            self.set_oracle([dataset[i] for i in indices])
            inputs = Collator(dataset, self.processor)(indices)
            for mode, guidance in (("on", True), ("off", False)):
                totals[mode] += self.model(**inputs, guidance=guidance).loss.item() / len(batches)
        self.model.train()
        return totals

    @torch.no_grad()
    def accuracy(self, dataset, batch_size: int = 16) -> dict[str, dict[str, float]]:
        """Task accuracy (%) per task and mode, greedy answers."""
        self.model.eval()
        predictions = []
        for indices in sorted(batch_indices(dataset, batch_size, seed=0, epoch=0), key=min):
            samples = [dataset[i] for i in indices]
            self.set_oracle(samples)
            image_sets, prompts, references, records = read_items(dataset, indices)
            inputs = self.processor(image_sets, prompts).to(self.model.query_tokens.device)
            answers = {}
            for mode in ("sam", "baseline"):
                visual = self.model.extract_visual_tokens(inputs["qformer_input_ids"], inputs["qformer_attention_mask"],
                                                          inputs["pixel_values"], guidance=mode == "sam")
                ids = self.model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], visual=visual,
                                          new_tokens_only=True, **generation_kwargs("greedy", max_new_tokens=24))
                answers[mode] = self.processor.decode(ids)
            for row, (reference, record) in enumerate(zip(references, records)):
                predictions.append(Prediction(record["id"], record["task"], record["linked"], reference,
                                              {mode: texts[row] for mode, texts in answers.items()}))
        self.model.train()
        return {task: {mode: 100.0 * sum(answer_is_correct(p, mode) for p in rows) / len(rows) for mode in ("sam", "baseline")}
                for task in TASKS if (rows := [p for p in predictions if p.task == task])}


def gradient_norms(guidance: SamGuidance) -> dict[str, float]:
    return {name: float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in getattr(guidance, name).parameters()
                                                            if p.grad is not None] or [torch.zeros(1)])))
            for name in MODULES}


def diagnose(config: DiagnoseConfig) -> dict:
    """Train the paper's recipe for `config.steps` steps and record what the module docstring says."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    train_config = TrainConfig(stage="sam", out=str(out), model=config.model, context=config.context,
                               exchange_layer=config.exchange_layer, batch_size=config.batch_size, seed=config.seed,
                               version=config.version)
    model, processor = open_model(train_config)
    if config.oracle:
        oracle = OracleContext(model.config)
        oracle.load_state_dict(model.guidance.state_dict())
        model.guidance = oracle
    trainable_names(model, "sam")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, config.warmup, config.steps))
    train = open_dataset(train_config)
    dev = MiniLink(SPLIT_SEEDS["dev"], 4 * config.eval_size, replace(train.config, tasks=TASKS))
    probe_batches = batch_indices(dev, config.batch_size, seed=0, epoch=0)[: config.probe_batches]
    probe = Probe(model, processor, config.oracle)
    collate = Collator(train, processor)
    log = {"config": asdict(config), "trainable_parameters": sum(p.numel() for p in params), "steps": [], "probes": []}
    start = time.perf_counter()
    model.train()
    batches = batch_indices(train, config.batch_size, config.seed, 0)
    for step in range(config.steps + 1):
        if step % config.probe_every == 0 or step == config.steps:
            log["probes"].append({"step": step, **probe.losses(dev, probe_batches)})
            print(f"step {step}: dev loss guidance on {log['probes'][-1]['on']:.4f}, off {log['probes'][-1]['off']:.4f}", flush=True)
        if step == config.steps:
            break
        indices = batches[step % len(batches)]
        probe.set_oracle([train[i] for i in indices])
        loss = model(**collate(indices), guidance=True).loss
        loss.backward()
        norms = gradient_norms(model.guidance)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        log["steps"].append({"step": step + 1, "loss": loss.item(), **norms})
    log["seconds"] = time.perf_counter() - start
    log["dev_accuracy"] = probe.accuracy(MiniLink(SPLIT_SEEDS["dev"], config.eval_size, replace(train.config, tasks=TASKS)))
    log["exchange_weight_norms"] = {name: float(torch.linalg.vector_norm(getattr(model.guidance, name).weight.detach())) for name in MODULES}
    print(f"dev accuracy: {log['dev_accuracy']}")
    (out / "diagnosis.json").write_text(json.dumps(log, indent=1))
    return log


def plot(runs: list[Path], path: Path) -> None:
    """Gradient norms, the guidance on − off dev loss, and dev accuracy per mode, one line/bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = {run.name: json.loads((run / "diagnosis.json").read_text()) for run in runs}
    figure, axes = plt.subplots(1, 5, figsize=(24, 4.2))
    for column, module in enumerate(MODULES):
        axis = axes[column]
        for name, log in logs.items():
            axis.plot([s["step"] for s in log["steps"]], [max(s[module], 1e-12) for s in log["steps"]], label=name, lw=1)
        axis.set_yscale("log")
        axis.set_title(f"gradient norm: {module}")
        axis.set_xlabel("step")
    axes[0].legend(fontsize=7, frameon=False)
    for name, log in logs.items():
        axes[3].plot([p["step"] for p in log["probes"]], [p["on"] - p["off"] for p in log["probes"]], marker=".", label=name)
    axes[3].axhline(0, color="grey", lw=0.8)
    axes[3].set_title("dev loss, guidance on − off (same batches)")
    axes[3].set_xlabel("step")
    width = 0.8 / (2 * len(logs))
    for k, (name, log) in enumerate(logs.items()):
        tasks = list(log["dev_accuracy"])
        for m, (mode, hatch) in enumerate((("baseline", "//"), ("sam", ""))):
            x = [i + (2 * k + m - len(logs) + 0.5) * width for i in range(len(tasks))]
            axes[4].bar(x, [log["dev_accuracy"][t][mode] for t in tasks], width=width, hatch=hatch,
                        color=f"C{k}", alpha=0.5 if mode == "baseline" else 1.0, label=f"{name} {mode}")
        axes[4].set_xticks(range(len(tasks)), tasks)
    axes[4].set_title("dev accuracy (%): baseline (hatched) vs SAM")
    axes[4].legend(fontsize=6, frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a stage-1 checkpoint (the frozen baseline)")
    parser.add_argument("--out", required=True, help="a run folder, or with --plot the figure's path")
    parser.add_argument("--plot", nargs="+", type=Path, default=None, help="plot these diagnosed runs instead")
    defaults = DiagnoseConfig(model="", out="")
    for name in ("steps", "warmup", "batch_size", "exchange_layer", "probe_every", "probe_batches", "eval_size", "seed", "version"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--context", default=defaults.context, choices=("all", "others"))
    parser.add_argument("--oracle", action="store_true", help="the context image is the linked object alone")
    args = parser.parse_args(argv)
    if args.plot:
        plot(args.plot, Path(args.out))
        return
    if not args.model:
        parser.error("--model is required unless --plot")
    diagnose(DiagnoseConfig(**{k: v for k, v in vars(args).items() if k != "plot"}))


if __name__ == "__main__":
    main()
