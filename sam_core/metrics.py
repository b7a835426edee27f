"""Captioning metrics scored the way the SAM authors score them, plus bootstrap intervals.

The paper's numbers come from ``evaluate_score.py`` in McCartney01/SAM. Matching it means:
answers normalised VQA-style (``normalize_answer``); ROUGE-L is the F of the ``rouge`` PyPI
package (not pycocoevalcap's ROUGE-L), averaged over samples, with an empty prediction scoring 0;
CIDEr and BLEU-4 are pycocoevalcap's, on the normalised strings (no PTB tokenizer), one reference
each; everything is reported x100. METEOR (pycocoevalcap, x100) is our addition.
"""

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from rouge import Rouge

# Marks that are dropped when they touch a space somewhere in the text, and otherwise become spaces.
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# A digit-comma-digit anywhere (e.g. "1,000") makes every mark above dropped rather than spaced.
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The reference passes re.UNICODE (== 32) into re.sub's `count` slot, so only the first 32 such
# periods are removed; kept for parity with the published scores.
_PERIODS_REMOVED = 32


def normalize_answer(text: str) -> str:
    """Normalise a caption as the SAM evaluation does, so scores are comparable with the paper."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    drop_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        touches_space = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if drop_all or touches_space else " ")
    out = _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_PERIODS_REMOVED)
    return out.strip("'").strip('"').strip().lower()


@dataclass
class CaptionScores:
    """Corpus scores (x100) for ``n`` caption pairs, with per-sample scores kept for bootstrapping."""

    n: int
    bleu4: float
    rouge_l: float
    cider: float
    meteor: float | None
    per_sample: dict[str, list[float]]

    def to_dict(self) -> dict:
        """The headline numbers only, small enough for a report or a JSON line."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "per_sample"}


def score_captions(predictions: list[str], references: list[str], meteor: bool = True) -> CaptionScores:
    """Score predictions against one reference each; ``meteor=False`` avoids starting a JVM."""
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no captions to score")
    preds = [normalize_answer(p) for p in predictions]
    refs = [normalize_answer(r) for r in references]
    empty = [i for i, r in enumerate(refs) if not r]
    if empty:
        raise ValueError(f"references at indices {empty[:10]} are empty after normalisation")

    rouge = Rouge()
    rouge_l = [100 * rouge.get_scores(p, r)[0]["rouge-l"]["f"] if p else 0.0 for p, r in zip(preds, refs)]
    # Integer keys in input order: pycocoevalcap returns per-sample scores in key order.
    gts = {i: [r] for i, r in enumerate(refs)}
    res = {i: [p] for i, p in enumerate(preds)}
    cider, cider_each = Cider().compute_score(gts, res)
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    per_sample = {
        "bleu4": [100 * float(s) for s in bleu_each[3]],
        "rouge_l": rouge_l,
        "cider": [100 * float(s) for s in cider_each],
    }
    meteor_score = None
    if meteor:
        meteor_score, per_sample["meteor"] = _meteor(gts, res)
    return CaptionScores(
        n=len(preds),
        bleu4=100 * float(bleu[3]),
        rouge_l=float(np.mean(rouge_l)),
        cider=100 * float(cider),
        meteor=meteor_score,
        per_sample=per_sample,
    )


def _meteor_line_safe(text: str) -> str:
    """METEOR talks over a line protocol split on '|||'; a CR or '|||' inside a caption would desync it."""
    return " ".join(text.replace("|||", "").split())


def _meteor(gts: dict[int, list[str]], res: dict[int, list[str]]) -> tuple[float, list[float]]:
    """Corpus METEOR and per-sample scores (x100), with the Java process always shut down."""
    if shutil.which("java") is None:
        raise RuntimeError("METEOR needs a `java` executable on PATH (Java 8+); install one or pass meteor=False")
    scorer = Meteor()
    try:
        score, each = scorer.compute_score(
            {k: [_meteor_line_safe(r) for r in v] for k, v in gts.items()},
            {k: [_meteor_line_safe(h) for h in v] for k, v in res.items()},
        )
    finally:
        process = scorer.meteor_p
        process.stdin.close()
        process.kill()
        process.wait()
        process.stdout.close()
        process.stderr.close()
        # compute_score keeps its lock if it fails midway; Meteor.__del__ would then block forever.
        if scorer.lock.locked():
            scorer.lock.release()
    return 100 * float(score), [100 * float(s) for s in each]


def _bootstrap(statistic: Callable[[np.ndarray], float], n: int, resamples: int, seed: int) -> np.ndarray:
    """``statistic`` of ``resamples`` index draws (with replacement) from range(n), seeded."""
    if n == 0:
        raise ValueError("cannot bootstrap an empty sample")
    if resamples < 1:
        raise ValueError("resamples must be at least 1")
    rng = np.random.default_rng(seed)
    return np.array([statistic(rng.integers(0, n, size=n)) for _ in range(resamples)])


def _percentiles(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0 < confidence < 1:
        raise ValueError("confidence must be between 0 and 1")
    tail = (1 - confidence) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_interval(
    values: list[float] | np.ndarray, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, so a score on a small test set comes with its uncertainty."""
    data = np.asarray(values, dtype=float)
    return _percentiles(_bootstrap(lambda idx: data[idx].mean(), len(data), resamples, seed), confidence)


def paired_bootstrap_ratio(
    a: list[float] | np.ndarray, b: list[float] | np.ndarray, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """mean(a) / mean(b) with a paired percentile CI, for "SAM / baseline" on the same samples.

    Both lists are resampled with the same indices, so per-sample difficulty cancels out.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"paired samples must have equal length, got {len(x)} and {len(y)}")
    if len(y) and y.mean() == 0:
        raise ValueError("the mean of b is zero, so the ratio is undefined")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = _bootstrap(lambda idx: x[idx].mean() / y[idx].mean(), len(x), resamples, seed)
    if not np.all(np.isfinite(ratios)):
        raise ValueError("the mean of b is zero in some resamples; the ratio CI is undefined")
    low, high = _percentiles(ratios, confidence)
    return float(x.mean() / y.mean()), low, high


def paired_bootstrap_difference(
    a: list[float] | np.ndarray, b: list[float] | np.ndarray, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """mean(a) - mean(b) with a paired percentile CI, for "SAM accuracy minus the control's" in points."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"paired samples must have equal length, got {len(x)} and {len(y)}")
    differences = x - y
    low, high = _percentiles(_bootstrap(lambda idx: differences[idx].mean(), len(x), resamples, seed), confidence)
    return float(differences.mean()), low, high
