"""The paper-recipe diagnosis: gradient norms, guidance on/off losses, the oracle context, the figure."""

import json

import torch

from sam_core.data import MiniLink, MiniLinkConfig
from sam_core.diagnose import DiagnoseConfig, OracleContext, diagnose, linked_alone, plot
from sam_core.train import MiniLinkModelSize, TrainConfig, train

MICRO = MiniLinkModelSize(num_query_tokens=1, image_size=32, vision_width=32, vision_layers=1, qformer_width=32,
                          qformer_layers=2, llm_width=32, llm_layers=1)


def test_diagnosis_records_gradients_and_guidance_on_off_losses_with_and_without_the_oracle(tmp_path):
    train(TrainConfig(stage="baseline", out=str(tmp_path / "base"), train_size=64, batch_size=8, lr=3e-3, warmup=2, steps=4,
                      size=MICRO, max_images=3))
    logs = {}
    for oracle in (False, True):
        logs[oracle] = diagnose(DiagnoseConfig(model=str(tmp_path / "base"), out=str(tmp_path / f"run{int(oracle)}"), steps=4,
                                               batch_size=4, probe_every=2, probe_batches=1, eval_size=6, oracle=oracle))
    for log in logs.values():
        first = log["steps"][0]
        # Zero-initialised B→A blocks every path to the loss at step 1: only B→A itself gets a gradient.
        assert first["patch_scorer"] == 0.0 and first["image_to_context"] == 0.0 and first["context_to_image"] > 0.0
        assert log["steps"][1]["image_to_context"] > 0.0
        assert log["probes"][0]["on"] == log["probes"][0]["off"]  # untrained guidance is the baseline exactly
        assert [p["step"] for p in log["probes"]] == [0, 2, 4] and set(log["dev_accuracy"]) <= {"group", "story", "question"}
    assert json.loads((tmp_path / "run1" / "diagnosis.json").read_text())["config"]["oracle"] is True
    plot([tmp_path / "run0", tmp_path / "run1"], tmp_path / "figure.png")
    assert (tmp_path / "figure.png").stat().st_size > 10_000


def test_the_oracle_context_is_the_linked_object_alone():
    sample = MiniLink(1, 1, MiniLinkConfig(tasks=("group",)))[0]
    image = linked_alone(sample, 64)
    linked = next(obj for obj in sample.scenes[0] if obj.name == sample.linked)
    x0, y0, x1, y1 = linked.box
    pixels = torch.tensor(list(image.getdata())).view(64, 64, 3)
    inside = pixels[y0:y1 + 1, x0:x1 + 1].reshape(-1, 3).tolist()
    from sam_core.data import COLOURS

    assert list(COLOURS[linked.colour]) in inside  # the linked object is drawn where it is in the first image
    guidance = OracleContext.__new__(OracleContext)
    torch.nn.Module.__init__(guidance)
    guidance.oracle = torch.ones(2, 5, 3)
    alpha, context = guidance.context_features(torch.zeros(2, 4, 5, 3), "all")
    assert torch.equal(context, guidance.oracle) and torch.allclose(alpha.sum(1), torch.ones(2, 5))
