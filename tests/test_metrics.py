"""Caption metrics against hand-derived values and an independent CIDEr-D, plus the bootstrap helpers."""

import math
from collections import Counter

import numpy as np
import pytest

from sam_core import metrics
from sam_core.metrics import (
    CaptionScores,
    bootstrap_interval,
    normalize_answer,
    paired_bootstrap_difference,
    paired_bootstrap_ratio,
    score_captions,
)

IDENTICAL = "A brown dog runs across the green field."
# Scored once with METEOR (one JVM start for the whole module).
METEOR_PREDICTIONS = [IDENTICAL, "the cat lay on the red mat", ""]
METEOR_REFERENCES = [IDENTICAL, "the cat sat on the mat", "two dogs play"]


@pytest.fixture(scope="module")
def meteor_run():
    """Scores with METEOR once, recording the Meteor instances so their Java processes can be checked."""
    started = []

    class RecordingMeteor(metrics.Meteor):
        def __init__(self):
            super().__init__()
            started.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metrics, "Meteor", RecordingMeteor)
        scores = score_captions(METEOR_PREDICTIONS, METEOR_REFERENCES)
    return scores, started


# --- normalisation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A man, riding a bike.", "a man riding a bike"),  # ", " touches a space: dropped; final period dropped
        ("red/blue car", "red blue car"),  # "/" touches no space: becomes a space
        ("hello, world,again", "hello worldagain"),  # the rule is per mark over the whole text, not per occurrence
        ("It costs 3.50 dollars.", "it costs 3.50 dollars"),  # a period before a digit is a decimal point
        ("1,000 people! (approx)", "1000 people approx"),  # digit,digit anywhere: every mark is dropped
        ('"Hello"', "hello"),
        ("'Quoted answer'", "quoted answer"),
        ("Don't stop", "don't stop"),  # inner apostrophes stay
        ("Line one\nLine\ttwo ", "line one line two"),
        ("Mr. Smith: OK", "mr smith: ok"),  # ':' is not in the punctuation list
        ("!!!", ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_answer_removes_at_most_32_periods():
    # The reference passes re.UNICODE (32) as re.sub's count; we keep that for score parity.
    assert normalize_answer("a. " * 40) == ("a " * 32 + "a. " * 8).strip()


# --- identical sentences -----------------------------------------------------------------------


def test_identical_sentences_score_100():
    scores = score_captions([IDENTICAL, "Two men play chess in a park"], [IDENTICAL, "two men play chess in a park."], meteor=False)
    assert scores.bleu4 == pytest.approx(100)
    # The rouge package's F is 2PR / (P + R + 1e-8), so a perfect match is 99.9999995, not exactly 100.
    assert scores.rouge_l == pytest.approx(100, abs=1e-5)
    assert scores.per_sample["bleu4"] == pytest.approx([100, 100])


def test_identical_sentence_meteor_is_100(meteor_run):
    scores, _ = meteor_run
    assert scores.per_sample["meteor"][0] == pytest.approx(100)
    assert scores.per_sample["bleu4"][0] == pytest.approx(100)
    assert scores.per_sample["rouge_l"][0] == pytest.approx(100, abs=1e-5)


def test_meteor_run_scores_every_sample_and_stops_java(meteor_run):
    scores, started = meteor_run
    assert len(scores.per_sample["meteor"]) == 3
    assert 0 < scores.per_sample["meteor"][1] < 100
    assert scores.per_sample["meteor"][2] == 0  # empty prediction
    assert 0 < scores.meteor < 100
    assert len(started) == 1
    assert started[0].meteor_p.poll() is not None  # the JVM was terminated, not left running


def test_missing_java_only_matters_for_meteor(monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(RuntimeError, match="java"):
        score_captions(["a cat"], ["a cat"])
    assert score_captions(["a cat"], ["a cat"], meteor=False).meteor is None


# --- ROUGE-L (the `rouge` package) -------------------------------------------------------------


def test_rouge_l_hand_computed():
    # rouge 1.0.1 `rouge-l` is rouge_l_summary_level with exclusive=True: words are counted as a SET.
    #   ref  "the cat sat on the mat"      -> distinct words {the, cat, sat, on, mat}        m = 5
    #   pred "the cat lay on the red mat"  -> distinct words {the, cat, lay, on, red, mat}   n = 6
    #   LCS (unique) = "the cat on the mat" (5 tokens) -> as a set {the, cat, on, mat}      = 4
    #   P = 4/6, R = 4/5, F = 2PR / (P + R) = (32/30) / (44/30) = 8/11
    # (pycocoevalcap's ROUGE-L would count tokens, LCS 5, P 5/7, R 5/6, with beta 1.2: 0.780.)
    scores = score_captions(["The cat lay on the red mat."], ["the cat sat on the mat"], meteor=False)
    assert scores.rouge_l == pytest.approx(100 * 8 / 11, rel=1e-6)


def test_empty_prediction_scores_zero_rouge_l():
    scores = score_captions(["", "?", "a cat"], ["a dog", "a dog", "a cat sleeps"], meteor=False)
    assert scores.per_sample["rouge_l"][:2] == [0.0, 0.0]
    # Empty predictions still count in the average (they are not skipped).
    assert scores.rouge_l == pytest.approx(scores.per_sample["rouge_l"][2] / 3)


# --- BLEU-4 ------------------------------------------------------------------------------------

BIKE_PRED = "a man rides a red bicycle down the street"  # 9 tokens
BIKE_REF = "a man is riding a red bicycle down the street"  # 10 tokens


def test_bleu4_hand_computed():
    # Clipped n-gram matches of the prediction against the reference:
    #   1-grams: a a man red bicycle down the street          8 of 9
    #   2-grams: a-man a-red red-bicycle bicycle-down down-the the-street      6 of 8
    #   3-grams: a-red-bicycle red-bicycle-down bicycle-down-the down-the-street 4 of 7
    #   4-grams: a-red-bicycle-down red-bicycle-down-the bicycle-down-the-street 3 of 6
    # Brevity penalty: c = 9 < r = 10 -> exp(1 - 10/9).
    expected = math.exp(1 - 10 / 9) * (8 / 9 * 6 / 8 * 4 / 7 * 3 / 6) ** 0.25  # 0.5912
    scores = score_captions([BIKE_PRED], [BIKE_REF], meteor=False)
    assert scores.bleu4 == pytest.approx(100 * expected, rel=1e-6)
    assert scores.per_sample["bleu4"] == pytest.approx([100 * expected], rel=1e-6)


def test_bleu4_is_corpus_level():
    # pycocoevalcap pools n-gram counts and lengths over the corpus before taking precisions.
    # Adding an identical 6-token pair: matches 14/15, 11/13, 8/11, 6/9; lengths c = 15, r = 16.
    expected = math.exp(1 - 16 / 15) * (14 / 15 * 11 / 13 * 8 / 11 * 6 / 9) ** 0.25
    scores = score_captions([BIKE_PRED, "the cat sat on the mat"], [BIKE_REF, "the cat sat on the mat"], meteor=False)
    assert scores.bleu4 == pytest.approx(100 * expected, rel=1e-6)
    assert scores.bleu4 != pytest.approx(np.mean(scores.per_sample["bleu4"]), rel=1e-3)


# --- CIDEr-D -----------------------------------------------------------------------------------


def cider_d(predictions, references, n=4, sigma=6.0):
    """Independent CIDEr-D with one reference per sample, as pycocoevalcap defines it."""

    def ngrams(text):
        words = text.split()
        return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))

    ref_grams = [ngrams(r) for r in references]
    # Document frequency: in how many samples' references an n-gram occurs (the test set's refs only).
    doc_freq = Counter(g for grams in ref_grams for g in grams)
    log_docs = math.log(len(references))

    def tfidf(grams):
        by_order = [{} for _ in range(n)]
        for g, tf in grams.items():
            by_order[len(g) - 1][g] = tf * (log_docs - math.log(max(1, doc_freq[g])))
        return by_order

    scores = []
    for pred, ref, rgrams in zip(predictions, references, ref_grams):
        hyp_vecs, ref_vecs = tfidf(ngrams(pred)), tfidf(rgrams)
        penalty = math.exp(-((len(pred.split()) - len(ref.split())) ** 2) / (2 * sigma**2))
        sims = []
        for h, r in zip(hyp_vecs, ref_vecs):
            dot = sum(min(w, r.get(g, 0.0)) * r.get(g, 0.0) for g, w in h.items())  # clipped
            norms = math.sqrt(sum(w * w for w in h.values())) * math.sqrt(sum(w * w for w in r.values()))
            sims.append(dot / norms * penalty if norms else 0.0)
        scores.append(10 * sum(sims) / n)
    return scores


def test_cider_matches_independent_implementation():
    preds = ["a dog runs on the grass", "the the the cat", "two men play chess in a park", "a red car"]
    refs = [
        "a dog is running on the green grass",
        "the cat sits on a sofa",
        "two men play chess in the park",
        "a red car parked near a tall building",
    ]
    expected = cider_d(preds, refs)
    scores = score_captions(preds, refs, meteor=False)
    assert scores.per_sample["cider"] == pytest.approx([100 * s for s in expected], rel=1e-9)
    assert scores.cider == pytest.approx(100 * np.mean(expected), rel=1e-9)
    assert scores.cider > 0


def test_cider_of_a_single_pair_is_zero():
    # idf = log(#samples / df) is log(1/1) = 0 for every n-gram when there is only one sample.
    assert score_captions([IDENTICAL], [IDENTICAL], meteor=False).cider == 0


# --- inputs and outputs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preds", "refs", "message"),
    [
        (["a", "b"], ["a"], "2 predictions but 1 references"),
        ([], [], "no captions"),
        (["a cat"], ["!!!"], "empty after normalisation"),
    ],
)
def test_invalid_inputs(preds, refs, message):
    with pytest.raises(ValueError, match=message):
        score_captions(preds, refs, meteor=False)


def test_to_dict_omits_per_sample():
    scores = score_captions(["a cat"], ["a cat sleeps"], meteor=False)
    assert isinstance(scores, CaptionScores)
    assert scores.to_dict() == {
        "n": 1,
        "bleu4": scores.bleu4,
        "rouge_l": scores.rouge_l,
        "cider": scores.cider,
        "meteor": None,
    }
    assert set(scores.per_sample) == {"bleu4", "rouge_l", "cider"}


# --- bootstrap ---------------------------------------------------------------------------------


def test_bootstrap_interval_is_deterministic_and_contains_mean():
    values = np.random.default_rng(1).normal(50, 10, size=200)
    low, high = bootstrap_interval(values, seed=3)
    assert (low, high) == bootstrap_interval(list(values), seed=3)
    assert (low, high) != bootstrap_interval(values, seed=4)
    assert low < values.mean() < high
    # Roughly mean +- 1.96 standard errors.
    half_width = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    assert high - low == pytest.approx(2 * half_width, rel=0.2)
    narrow = bootstrap_interval(values, confidence=0.5, seed=3)
    assert low < narrow[0] < narrow[1] < high


def test_bootstrap_interval_of_constant_values():
    assert bootstrap_interval([7.0] * 5) == (7.0, 7.0)


@pytest.mark.parametrize("kwargs", [{"values": []}, {"values": [1.0], "confidence": 1.0}, {"values": [1.0], "resamples": 0}])
def test_bootstrap_interval_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        bootstrap_interval(**kwargs)


def test_paired_ratio_exact_multiple():
    baseline = [1.0, 2.0, 3.0, 10.0, 0.5]
    assert paired_bootstrap_ratio([2 * v for v in baseline], baseline) == pytest.approx((2.0, 2.0, 2.0))


def test_paired_ratio_uses_the_same_indices():
    rng = np.random.default_rng(0)
    baseline = rng.uniform(10, 90, size=300)  # per-sample difficulty varies a lot
    sam = 1.1 * baseline + rng.normal(0, 1, size=300)
    ratio, low, high = paired_bootstrap_ratio(sam, baseline, seed=5)
    assert ratio == pytest.approx(sam.mean() / baseline.mean())
    assert low < ratio < high
    assert low > 1.05 and high < 1.15
    assert (ratio, low, high) == paired_bootstrap_ratio(list(sam), list(baseline), seed=5)
    # Unpaired resampling of the same data gives a far wider interval.
    draw = np.random.default_rng(5)
    unpaired = [
        sam[draw.integers(0, 300, 300)].mean() / baseline[draw.integers(0, 300, 300)].mean() for _ in range(2000)
    ]
    unpaired_low, unpaired_high = np.quantile(unpaired, [0.025, 0.975])
    assert (high - low) < (unpaired_high - unpaired_low) / 5


def test_paired_ratio_rejects_bad_input():
    with pytest.raises(ValueError, match="equal length"):
        paired_bootstrap_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="zero"):
        paired_bootstrap_ratio([1.0, 2.0], [0.0, 0.0])


def test_paired_difference_is_the_mean_gap_with_a_tight_paired_interval():
    rng = np.random.default_rng(1)
    control = rng.integers(0, 2, size=400) * 100.0  # per-sample accuracy, 0 or 100
    sam = np.maximum(control, rng.integers(0, 2, size=400) * 100.0)  # right wherever the control is, and more
    gap, low, high = paired_bootstrap_difference(sam, control, seed=3)
    assert gap == pytest.approx(sam.mean() - control.mean()) and low < gap < high and low > 0
    assert paired_bootstrap_difference(control, control) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="equal length"):
        paired_bootstrap_difference([1.0], [1.0, 2.0])
