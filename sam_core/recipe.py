"""The embedded default, reproducibly: every stage from scratch, the step-matched control, evaluation, the card.

    python -m sam_core.recipe --out checkpoints/minilink --vision-steps 2000 --second-stage joint

Stage 0 (with --vision-steps) pretrains the vision encoder to name the object in every grid cell of single images
(InstructBLIP starts from a pretrained, frozen ViT); it stays frozen afterwards. Stage 1 trains the baseline
(guidance off), optionally after a read-out warm-up (--readout-steps: single-object naming only, as BLIP-2 learns to
caption before it learns instructions; without it, a stage 1 on MiniLINK version 2 can stay colour-blind). Stage 2 either trains only the patch scorer and the exchange layers over the frozen stage-1 model
(`sam`, the paper's recipe; `guidance=False` is then the stage-1 baseline exactly) or every weight with guidance on
for a random half of the batches (`joint`). Either way one checkpoint serves both modes.

The control is the strongest fair baseline: stage 1 continued with guidance off for as many steps as stage 2, on
the same batches. The headline is SAM against it, on the held-out test split (seed 2, touched once per shipped
model) and on fresh seeds; every choice behind the command was made on the dev split (seed 1).
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from .data import COLOURS, SHAPES, SPLIT_SEEDS, TASKS, TRAINING_TASKS, MiniLinkConfig
from .domain import CALIBRATION_FILE, calibrate
from .evaluate import CARD_SUBSET, headline_table, markdown_table, subset_accuracy
from .evaluate import main as evaluate_main
from .loading import load_sam
from .train import MiniLinkModelSize, TrainConfig, train

SECOND_STAGES = {
    "sam": "the paper's recipe: only the patch scorer and the two exchange layers train, everything else frozen",
    "joint": "joint: every weight{but_vision} trains, with guidance on for a random half of the batches, so the baseline mode "
    "and the SAM mode of the one checkpoint are trained together",
}
BENCHMARKS = {
    2: ("MiniLINK version 2: every image also holds the decoy colour on another shape and the decoy shape in another "
        "colour, and any distractor sharing one of these four attributes comes with its twin, so in every image the "
        "linked colour is exactly as frequent as the decoy colour and the linked shape as the decoy shape. Only binding "
        "colour to shape across the images finds the linked object; rules that see each image's bag of colours and "
        "bag of shapes are at chance (25%). Storytelling answers name the character and the linked object, not its "
        "place: with one visual token per image neither mode ever got the place right (see docs/minilink.md)"),
    1: "MiniLINK version 1 (the earlier benchmark; the linked colour and shape are the most frequent ones)",
}
CARD = """# MiniLINK SAM (the embedded default)

A tiny SAM trained on **MiniLINK**, SAM studio's procedural stand-in for MmLINK: groups of strongly different
images (varied backgrounds, {min_objects}–{max_objects} coloured shapes each, from {colours} colours × {shapes} shapes)
that share exactly one object. {benchmark}. It knows only MiniLINK's synthetic world of coloured shapes; real
photographs need the full InstructBLIP-Vicuna-7B model. The research behind it, every run with its numbers, and
why the paper's own recipe does or does not learn here: `docs/minilink.md`.

- Architecture: ViT {vision_layers}×{vision_width} on {image_size}px images (8px patches), Q-Former
  {qformer_layers}×{qformer_width} (cross-attention in {cross_attention_text}) with
  **K = {num_query_tokens}** query token per image (the tight token budget), Llama {llm_layers}×{llm_width};
  word-level tokenizers. Context "{context}", exchange at Q-Former layer {exchange_layer}; {stage2_parameters}
  parameters train in stage 2.
- Data: MiniLINK train split (seed 0, generated on the fly, {train_size} samples, N = {min_images}–{max_images}
  images; stage-1 tasks: {baseline_tasks}; stage 2 and the control: group captioning, storytelling, shared-object
  questions).
{stage_lines}- Seed {seed}, batch {batch_size}. Command (the whole pipeline, from scratch): `{command}`
  ({total_minutes:.0f} min of wall time in all; {cpu_minutes:.0f} min of CPU time; when wall time is far above CPU
  time, the cores were shared with other work).

## Protocol

Every choice behind that command (stages, steps, learning rates, context, the benchmark's knobs) was made on the dev
split (seed 1). The held-out test split (seed 2) was evaluated once, for this checkpoint, by the command itself;
so were three fresh seeds ({extra_seeds}), disjoint from train (0), dev (1) and test (2). Intervals are 95% paired
bootstrap intervals over samples. The **control** is the strongest fair baseline: stage 1 continued with guidance
off for as many steps ({sam_steps}) as stage 2, on the same batches, at lr {control_lr}; it is evaluated with
guidance off. "Guidance off" is this checkpoint read without guidance (what the app shows as the baseline).

## SAM against the step-matched control

{headline}

Accuracy: the answer names the linked object's colour and shape together (a question: the asked attribute).
CIDEr here is an accuracy proxy: the answers are templated, so CIDEr mostly counts whether the colour and the
shape are right (for questions it is exactly 2.5 × accuracy); a CIDEr ratio on MiniLINK is not comparable with the
paper's ratios on free-form captions, where the paper's margins (≥ 1.37× group, ≥ 1.22× storytelling) come from.
The no-binding rules (`python -m sam_core.evaluate --shortcuts`) see each image's bag of colours and bag of
shapes and never which colour goes with which shape.

## Every row on the held-out test split

{table}

Greedy decoding, up to {max_new_tokens} new tokens. Metrics as the authors compute them (their text normalisation;
BLEU-4, ROUGE-L F, CIDEr ×100 with one reference; plus METEOR). "Binds by place" rules also see where each colour
and each shape sits, so they can pair a colour with the shape in its cell: binding within an image, shown for
reference. Made by `{eval_command}`; the rows of every split are in `test_results.json`.
"""


def stage_line(title: str, log: dict, steps: int, batch_size: int, lr: float, extra: str = "") -> str:
    return (f"- {title}: {steps} steps × batch {batch_size}, lr {lr}, {log['seconds'] / 60:.1f} min wall"
            f" ({log['cpu_seconds'] / 60:.1f} min CPU){extra}.\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="checkpoints/minilink")
    parser.add_argument("--work", default="runs/recipe", help="where every stage, the control and the evaluation go")
    parser.add_argument("--num-query-tokens", type=int, default=MiniLinkModelSize.num_query_tokens)
    parser.add_argument("--qformer-layers", type=int, default=MiniLinkModelSize.qformer_layers)
    parser.add_argument("--cross-attention-frequency", type=int, default=MiniLinkModelSize.cross_attention_frequency)
    parser.add_argument("--exchange-layer", type=int, default=None, help="default: the last Q-Former layer")
    parser.add_argument("--vision-steps", type=int, default=0,
                        help="stage 0: pretrain the vision encoder for this many steps, then keep it frozen (0: no stage 0)")
    parser.add_argument("--vision-batch-size", type=int, default=64)
    parser.add_argument("--readout-steps", type=int, default=0,
                        help="stage 1 starts with this many steps of single-object naming only (0: none)")
    parser.add_argument("--baseline-steps", type=int, default=3000)
    parser.add_argument("--baseline-tasks", nargs="+", default=list(TASKS) + ["name"], choices=TRAINING_TASKS,
                        help="stage-1 tasks; 'name' adds single-object naming, 'lookup' single-image lookups")
    parser.add_argument("--second-stage", choices=("sam", "joint"), default="sam",
                        help="sam: the paper's recipe (only the adapter trains); joint: everything trains, guidance on "
                             "for a random half of the batches")
    parser.add_argument("--sam-steps", type=int, default=1000, help="stage 2 steps, and the control's")
    parser.add_argument("--baseline-lr", type=float, default=1e-3)
    parser.add_argument("--sam-lr", type=float, default=3e-3)
    parser.add_argument("--control-lr", type=float, default=None, help="the control's learning rate (default: --baseline-lr)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--context", default="all", choices=("all", "others"))
    parser.add_argument("--version", type=int, default=MiniLinkConfig.version, choices=(1, 2), help="MiniLINK version")
    parser.add_argument("--decoys", action="store_true", help="MiniLINK version 1 with decoys")
    parser.add_argument("--test-size", type=int, default=600, help="samples of the test split and of every extra seed")
    parser.add_argument("--extra-seeds", type=int, nargs="*", default=[101, 102, 103], help="fresh splits, besides test")
    parser.add_argument("--train-size", type=int, default=TrainConfig.train_size, help="MiniLINK train samples (seed 0)")
    parser.add_argument("--no-meteor", action="store_true", help="evaluate without METEOR (no Java)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration-samples", type=int, default=48,
                        help="out-of-domain calibration: dev samples per setting and size to fit on, and as many to set the threshold on")
    args = parser.parse_args(argv)
    if {SPLIT_SEEDS["train"], SPLIT_SEEDS["dev"], SPLIT_SEEDS["test"]} & set(args.extra_seeds):
        parser.error("--extra-seeds must differ from the train, dev and test seeds (0, 1, 2)")
    work, out = Path(args.work), Path(args.out)
    size = MiniLinkModelSize(num_query_tokens=args.num_query_tokens, qformer_layers=args.qformer_layers,
                             cross_attention_frequency=args.cross_attention_frequency)
    control_lr = args.control_lr or args.baseline_lr

    common = dict(batch_size=args.batch_size, seed=args.seed, log_every=100, save_every=500, train_size=args.train_size,
                  decoys=args.decoys, version=args.version, context=args.context, exchange_layer=args.exchange_layer)
    stage1 = dict(steps=args.baseline_steps, lr=args.baseline_lr, tasks=tuple(args.baseline_tasks), **common)
    logs = {}
    resumed = [stage for stage in ("vision", "readout", "baseline", "sam", "control") if (work / stage / "train_state.pt").exists()]
    if args.vision_steps:
        logs["vision"] = train(TrainConfig(stage="vision", out=str(work / "vision"), steps=args.vision_steps, lr=args.baseline_lr,
                                           size=size, **{**common, "batch_size": args.vision_batch_size}))
        stage1.update(model=str(work / "vision"), freeze_vision=True)
    else:
        stage1.update(size=size)
    if args.readout_steps:
        logs["readout"] = train(TrainConfig(stage="baseline", out=str(work / "readout"), **{**stage1, "steps": args.readout_steps,
                                                                                           "tasks": ("name",)}))
        stage1 = {**stage1, "model": str(work / "readout"), "size": None}
    logs["baseline"] = train(TrainConfig(stage="baseline", out=str(work / "baseline"), **stage1))
    frozen = bool(args.vision_steps)
    logs["sam"] = train(TrainConfig(stage=args.second_stage, out=str(work / "sam"), model=str(work / "baseline"), steps=args.sam_steps,
                                    lr=args.sam_lr, warmup=50, freeze_vision=frozen, **common))
    logs["control"] = train(TrainConfig(stage="baseline", out=str(work / "control"), model=str(work / "baseline"), steps=args.sam_steps,
                                        lr=control_lr, warmup=50, freeze_vision=frozen, **common))
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(work / "sam", out, ignore=shutil.ignore_patterns("train_state.pt"))
    # Full precision, whatever the machine: the card's numbers must not depend on whether bitsandbytes runs here
    # (the app's NF4 is compared with them by `python -m benchmarks.quantization`).
    evaluation = ["--model", f"MiniLINK={out}", "--control", str(work / "control"), "--quantization", "none",
                  "--size", str(args.test_size),
                  "--seeds", str(SPLIT_SEEDS["test"]), *map(str, args.extra_seeds), "--version", str(args.version),
                  "--out", str(work / "eval")] + ["--decoys"] * args.decoys + ["--no-meteor"] * args.no_meteor
    evaluation_started, evaluation_cpu = time.perf_counter(), time.process_time()
    evaluate_main(evaluation)
    eval_seconds, eval_cpu = time.perf_counter() - evaluation_started, time.process_time() - evaluation_cpu
    rows = json.loads((work / "eval" / "results.json").read_text())
    test_rows = [r for r in rows if "test" in r["model"] or not args.extra_seeds]

    stage_lines = ""
    if args.vision_steps:
        accuracy = logs["vision"]["cell_accuracy"]
        stage_lines += stage_line("Stage 0 (vision: the ViT names the colour and the shape of the object in every grid cell of "
                                  "single images; frozen afterwards)", logs["vision"], args.vision_steps, args.vision_batch_size,
                                  args.baseline_lr, f"; held-out cell accuracy colour {accuracy['colour']:.1f}%, shape {accuracy['shape']:.1f}%")
    if args.readout_steps:
        stage_lines += stage_line("Stage 1, read-out warm-up (single-object naming only: \"What is in the picture?\" → \"a red "
                                  "star .\")", logs["readout"], args.readout_steps, args.batch_size, args.baseline_lr)
    stage_lines += stage_line("Stage 1 (baseline: " + ("Q-Former, queries, projection and LLM from scratch over the frozen ViT)"
                              if frozen else "everything but the adapter, from scratch)"), logs["baseline"], args.baseline_steps,
                              args.batch_size, args.baseline_lr)
    stage_lines += stage_line(f"Stage 2 ({SECOND_STAGES[args.second_stage].format(but_vision=' but the frozen ViT' * frozen)})",
                              logs["sam"], args.sam_steps, args.batch_size, args.sam_lr)
    stage_lines += stage_line("Control (stage 1 continued with guidance off, the same batches)", logs["control"], args.sam_steps,
                              args.batch_size, control_lr)
    stage_lines += f"- Evaluation of the test split and {len(args.extra_seeds)} fresh seeds ({args.test_size} samples each): {eval_seconds / 60:.1f} min.\n"
    if resumed:
        stage_lines += (f"- Stages {', '.join(resumed)} resumed from the `train_state.pt` an earlier run with the same settings "
                        f"left in `{work}` (a finished stage is reused as it is); their times above include that run's.\n")
    train_config = logs["baseline"]["config"]
    model_config = load_sam(str(out)).model.config
    card = CARD.format(
        **{k: v for k, v in vars(size).items()},
        cross_attention_text={1: "every layer", 2: "every second layer"}.get(size.cross_attention_frequency,
                                                                            f"every {size.cross_attention_frequency}th layer"),
        min_objects=MiniLinkConfig.min_objects, max_objects=MiniLinkConfig.max_objects, colours=len(COLOURS), shapes=len(SHAPES),
        benchmark=BENCHMARKS[args.version] + (" with decoys" if args.decoys else ""),
        context=args.context, exchange_layer=model_config.exchange_layer, stage2_parameters=logs["sam"]["trainable_parameters"],
        train_size=train_config["train_size"], min_images=train_config["min_images"], max_images=train_config["max_images"],
        baseline_tasks=", ".join(train_config["tasks"]), stage_lines=stage_lines, seed=args.seed, batch_size=args.batch_size,
        command="python -m sam_core.recipe " + " ".join(argv if argv is not None else sys.argv[1:]),
        total_minutes=(sum(log["seconds"] for log in logs.values()) + eval_seconds) / 60,
        cpu_minutes=(sum(log["cpu_seconds"] for log in logs.values()) + eval_cpu) / 60,
        extra_seeds=", ".join(map(str, args.extra_seeds)) or "none", sam_steps=args.sam_steps, control_lr=control_lr,
        headline=headline_table(rows), table=markdown_table(test_rows), max_new_tokens=24,
        eval_command="python -m sam_core.evaluate " + " ".join(evaluation),
    )
    (out / "README.md").write_text(card)
    subset = {**CARD_SUBSET, "version": args.version, "decoys": args.decoys,
              "quantization": "none",
              "accuracy": subset_accuracy(load_sam(str(out), quantization="none"), decoys=args.decoys, version=args.version)}
    (out / "card_subset.json").write_text(json.dumps(subset, indent=1))
    shutil.copy(work / "eval" / "results.json", out / "test_results.json")
    # The out-of-domain check's references: MiniLINK's dev split drawn, no weights involved (sam_core/domain.py).
    calibrate(args.calibration_samples, args.calibration_samples).save(out / CALIBRATION_FILE)
    print(card)


if __name__ == "__main__":
    main()
