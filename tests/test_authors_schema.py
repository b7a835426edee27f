"""`python -m sam_core.evaluate --data annotations.json` on test data in the authors' release schema.

Their test sets (AESOP, VIST, Conceptual; McCartney01/SAM) are one folder each: `annotations.json`, a JSON list of
{"id": int, "img_list": [image paths relative to the folder], "instruction": str, "output": str}, and the images.
Storytelling instructions carry `{image#k}Caption#k:` markers with the last caption left open; group captioning
asks for the common factor. This fixture is written in that schema, so the path works the day a user has the data.
"""

import json

from PIL import Image

from sam_core.evaluate import main
from sam_core.loading import save_adapter
from sam_core.processing import STORY_QUESTION

AESOP_LIKE = [
    {"id": 0, "img_list": ["images/0_0.jpg", "images/0_1.jpg", "images/0_2.jpg"],
     "instruction": f"{STORY_QUESTION}{{image#1}}Caption#1:The fox saw a crow with a piece of cheese."
                    "{image#2}Caption#2:He praised the crow's voice.{image#3}Caption#3:",
     "output": "The crow sang and the cheese fell."},
    {"id": 1, "img_list": ["images/1_0.jpg", "images/1_1.jpg", "images/1_2.jpg", "images/1_3.jpg"],
     "instruction": f"{STORY_QUESTION}{{image#1}}Caption#1:A hare laughed at a tortoise.{{image#2}}Caption#2:They "
                    "agreed to race.{image#3}Caption#3:The hare slept under a tree.{image#4}Caption#4:",
     "output": "The tortoise crossed the line first."},
]
CONCEPTUAL_LIKE = [
    {"id": 7, "img_list": ["images/7_0.jpg", "images/7_1.jpg", "images/7_2.jpg"],
     "instruction": "Sum up the common factor in these three pictures in a single statement.",
     "output": "All of them show a red umbrella."},
]


def write_test_set(folder, records):
    folder.mkdir(parents=True)
    (folder / "images").mkdir()
    for record in records:
        for index, name in enumerate(record["img_list"]):
            Image.new("RGB", (48, 36), (40 * index, 120, 200 - 30 * index)).save(folder / name, quality=90)
    (folder / "annotations.json").write_text(json.dumps(records, indent=4))
    return folder / "annotations.json"


def test_evaluate_reads_the_authors_test_sets_and_scores_them(tmp_path, tiny_checkpoint, make_model, capsys, one_thread):
    save_adapter(make_model(active=True), tmp_path / "sam_adapter.safetensors")  # as `convert` writes it
    for name, records in (("AESOP", AESOP_LIKE), ("Conceptual", CONCEPTUAL_LIKE)):
        annotations = write_test_set(tmp_path / "data" / name, records)
        out = tmp_path / "results" / name
        main(["--model", str(tiny_checkpoint), "--adapter", str(tmp_path / "sam_adapter.safetensors"), "--data", str(annotations),
              "--max-new-tokens", "4", "--no-meteor", "--out", str(out)])
        rows = json.loads((out / "results.json").read_text())
        assert [(r["task"], r["mode"], r["n"]) for r in rows] == [("all", "sam", len(records)), ("all", "baseline", len(records))]
        assert all({"bleu4", "rouge_l", "cider", "cider_ci"} <= set(r) and "accuracy" not in r for r in rows)
        predictions = json.loads((out / "predictions.json").read_text())
        (model_predictions,) = predictions.values()
        assert sorted(p["id"] for p in model_predictions) == sorted(str(r["id"]) for r in records)
        assert all(p["reference"] == r["output"] for p, r in zip(sorted(model_predictions, key=lambda p: p["id"]), records))
    assert "| all | sam | 2 |" in capsys.readouterr().out
    assert "4-bit NF4 language model" in (out / "results.md").read_text()  # the precision the scores were made in
