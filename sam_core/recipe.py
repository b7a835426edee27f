"""The embedded default, reproducibly: train the MiniLINK baseline, then SAM's adapters, evaluate, write the card.

    python -m sam_core.recipe --out checkpoints/minilink

Stage 1 trains a tiny InstructBLIP on MiniLINK (guidance off): from scratch, or, with --vision-steps, over a
vision encoder first pretrained to name the object in every grid cell of single images (stage 0; InstructBLIP
starts from a pretrained, frozen ViT) and kept frozen. Stage 2 either freezes everything and trains only the
patch scorer and the exchange layers (`sam`, the paper's recipe; `guidance=False` is then the stage-1 baseline
exactly) or trains every weight with guidance on for a random half of the batches (`joint`, what the embedded
default uses: on MiniLINK with decoys the adapter alone does not learn to select). Either way the result is one
checkpoint that serves both modes: `guidance=False` is the baseline, `guidance=True` is SAM.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

from .data import COLOURS, SHAPES, TASKS, TRAINING_TASKS, MiniLinkConfig
from .evaluate import CARD_SUBSET, subset_accuracy
from .evaluate import main as evaluate_main
from .loading import load_sam
from .train import MiniLinkModelSize, TrainConfig, train

SECOND_STAGES = {
    "sam": "SAM, the paper's recipe: only the adapter trains, everything else frozen",
    "joint": "joint: every weight{but_vision} trains, with guidance on for a random half of the batches, so the baseline mode "
    "and the SAM mode of the one checkpoint are trained equally",
}
DECOYS_TEXT = (", and with decoys: every image also holds the decoy colour on another shape and the decoy shape in another\n"
               "colour, so the colours and shapes all images share do not say which colour goes with which shape")
CARD = """# MiniLINK SAM (the embedded default)

A tiny SAM trained on **MiniLINK**, SAM studio's procedural stand-in for MmLINK: groups of strongly
different images (varied backgrounds, {min_objects}–{max_objects} coloured shapes each, from {colours} colours ×
{shapes} shapes) that share exactly one
object{decoys_text}. It knows only MiniLINK's synthetic world of coloured shapes; real photographs need the full
InstructBLIP-Vicuna-7B model.

- Architecture: ViT {vision_layers}×{vision_width} on {image_size}px images (8px patches), Q-Former
  {qformer_layers}×{qformer_width} with **K = {num_query_tokens}** query token(s) per image (the tight token budget),
  Llama {llm_layers}×{llm_width}; word-level tokenizers. trained parameters in stage 2: {adapter_parameters},
  context "{context}", exchange at Q-Former layer {exchange_layer}.
- Data: MiniLINK train split (seed 0, generated on the fly, {train_size} samples, N = {min_images}–{max_images}
  images; stage-1 tasks: {baseline_tasks}; stage 2: group captioning / storytelling / shared-object questions);
  scores on the held-out test split (seed 2).
{stage0}- Stage 1 (baseline: {stage1_text}): {baseline_steps} steps × batch {batch_size},
  lr {baseline_lr}, {baseline_minutes:.1f} min on {machine}.
- Stage 2 ({second_stage_text}): {sam_steps} steps × batch {batch_size}, lr {sam_lr},
  {sam_minutes:.1f} min.
- Seed {seed}. Reproduce with: `{command}`

## Held-out test scores (SAM next to the baseline on the same samples)

{table}

Greedy decoding, up to {max_new_tokens} new tokens. Metrics as the authors compute them (their text
normalisation; BLEU-4, ROUGE-L F, CIDEr ×100 with one reference; plus METEOR); accuracy = the answer names
the linked object's colour and shape. Intervals: 95% bootstrap (paired for the ratio).
"""


def stage0_line(vision: Path, args) -> str:
    log = json.loads((vision / "training_log.json").read_text())
    return (
        f"- Stage 0 (vision pretraining: the ViT names the colour and the shape of the object in every grid cell of single\n"
        f"  images): {args.vision_steps} steps × batch {args.vision_batch_size}, lr {args.baseline_lr}, {log['seconds'] / 60:.1f} min;"
        f" held-out cell accuracy colour {log['cell_accuracy']['colour']:.1f}%, shape {log['cell_accuracy']['shape']:.1f}%.\n"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="checkpoints/minilink")
    parser.add_argument("--work", default="runs/recipe", help="where the stage-1 model and logs go")
    parser.add_argument("--num-query-tokens", type=int, default=MiniLinkModelSize.num_query_tokens)
    parser.add_argument("--vision-steps", type=int, default=0,
                        help="stage 0: pretrain the vision encoder for this many steps, then keep it frozen (0: no stage 0)")
    parser.add_argument("--vision-batch-size", type=int, default=64)
    parser.add_argument("--baseline-steps", type=int, default=3000)
    parser.add_argument("--baseline-tasks", nargs="+", default=list(TASKS), choices=TRAINING_TASKS,
                        help="stage-1 tasks; 'name' adds single-object naming, 'lookup' single-image lookups")
    parser.add_argument("--second-stage", choices=("sam", "joint"), default="sam",
                        help="sam: the paper's recipe (only the adapter trains); joint: everything trains, guidance on "
                             "for a random half of the batches, so both modes share equally trained weights")
    parser.add_argument("--sam-steps", type=int, default=1000)
    parser.add_argument("--baseline-lr", type=float, default=1e-3)
    parser.add_argument("--sam-lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--context", default="all", choices=("all", "others"))
    parser.add_argument("--decoys", action="store_true",
                        help="MiniLINK with a decoy colour and a decoy shape in every image (training and test)")
    parser.add_argument("--test-size", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-baseline", action="store_true", help="reuse WORK/baseline (and WORK/vision)")
    args = parser.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    size = MiniLinkModelSize(num_query_tokens=args.num_query_tokens)

    common = dict(batch_size=args.batch_size, seed=args.seed, log_every=100, save_every=500, decoys=args.decoys)
    if not args.skip_baseline:
        stage1 = dict(steps=args.baseline_steps, lr=args.baseline_lr, tasks=tuple(args.baseline_tasks), **common)
        if args.vision_steps:
            train(TrainConfig(stage="vision", out=str(work / "vision"), steps=args.vision_steps, lr=args.baseline_lr, size=size,
                              context=args.context, **{**common, "batch_size": args.vision_batch_size}))
            stage1.update(model=str(work / "vision"), freeze_vision=True)
        else:
            stage1.update(size=size, context=args.context)
        train(TrainConfig(stage="baseline", out=str(work / "baseline"), **stage1))
    baseline_log = json.loads((work / "baseline" / "training_log.json").read_text())
    sam_log = train(TrainConfig(stage=args.second_stage, out=str(work / "sam"), model=str(work / "baseline"), steps=args.sam_steps,
                                lr=args.sam_lr, warmup=50, context=args.context, freeze_vision=bool(args.vision_steps), **common))
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(work / "sam", out, ignore=shutil.ignore_patterns("train_state.pt"))
    evaluate_main(["--model", f"MiniLINK={out}", "--size", str(args.test_size), "--out", str(work / "eval")]
                  + ["--decoys"] * args.decoys)

    train_config = baseline_log["config"]
    card = CARD.format(
        **{k: v for k, v in vars(size).items()},
        min_objects=MiniLinkConfig.min_objects, max_objects=MiniLinkConfig.max_objects, colours=len(COLOURS),
        shapes=len(SHAPES), decoys_text=DECOYS_TEXT if args.decoys else "",
        adapter_parameters=sam_log["trainable_parameters"], context=args.context,
        exchange_layer=size.qformer_layers - 1, train_size=train_config["train_size"],
        min_images=train_config["min_images"], max_images=train_config["max_images"],
        baseline_tasks=", ".join(train_config["tasks"]),
        stage0=stage0_line(work / "vision", args) if args.vision_steps else "",
        stage1_text="Q-Former, queries, projection and LLM from scratch over the frozen ViT" if args.vision_steps
        else "everything but the adapter, from scratch",
        baseline_steps=args.baseline_steps, sam_steps=args.sam_steps, batch_size=args.batch_size,
        baseline_lr=args.baseline_lr, sam_lr=args.sam_lr, baseline_minutes=baseline_log["seconds"] / 60,
        sam_minutes=sam_log["seconds"] / 60, machine="2 CPU cores", seed=args.seed,
        second_stage_text=SECOND_STAGES[args.second_stage].format(but_vision=" but the frozen ViT" * bool(args.vision_steps)),
        command="python -m sam_core.recipe " + " ".join(argv if argv is not None else sys.argv[1:]),
        table=(work / "eval" / "results.md").read_text(), max_new_tokens=24,
    )
    (out / "README.md").write_text(card)
    subset = {**CARD_SUBSET, "decoys": args.decoys, "accuracy": subset_accuracy(load_sam(str(out)), decoys=args.decoys)}
    (out / "card_subset.json").write_text(json.dumps(subset, indent=1))
    shutil.copy(work / "eval" / "results.json", out / "test_results.json")
    print(card)


if __name__ == "__main__":
    main()
