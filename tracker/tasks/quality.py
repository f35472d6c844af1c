"""Quality metrics computed locally (nothing is fetched from the Hub, unlike ``evaluate.load``)."""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Hashable, Sequence


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure with stemming, as ``evaluate``'s rouge reports it (0 to 1)."""
    from rouge_score import rouge_scorer

    _check_lengths(predictions, references)
    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    totals = dict.fromkeys(kinds, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)
        for kind in kinds:
            totals[kind] += scores[kind].fmeasure
    return {kind: total / len(predictions) for kind, total in totals.items()}


def accuracy(predictions: Sequence[Hashable], references: Sequence[Hashable]) -> float:
    _check_lengths(predictions, references)
    return sum(p == r for p, r in zip(predictions, references)) / len(predictions)


def macro_f1(predictions: Sequence[Hashable], references: Sequence[Hashable]) -> float:
    """F1 averaged over the classes present in the references or the predictions."""
    _check_lengths(predictions, references)
    classes = set(references) | set(predictions)
    f1s = []
    for cls in classes:
        tp = sum(p == cls and r == cls for p, r in zip(predictions, references))
        fp = sum(p == cls and r != cls for p, r in zip(predictions, references))
        fn = sum(p != cls and r == cls for p, r in zip(predictions, references))
        denominator = 2 * tp + fp + fn
        f1s.append(2 * tp / denominator if denominator else 0.0)
    return sum(f1s) / len(f1s)


def _check_lengths(predictions: Sequence, references: Sequence) -> None:
    if not predictions or len(predictions) != len(references):
        raise ValueError(
            f"need as many predictions as references, and at least one "
            f"(got {len(predictions)} and {len(references)})"
        )


def rouge_l_multi(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean ROUGE-L F-measure against the best of several references per prediction."""
    from rouge_score import rouge_scorer

    _check_lengths(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return sum(scorer.score_multi(list(refs), pred)["rougeL"].fmeasure
               for pred, refs in zip(predictions, references)) / len(predictions)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Corpus BLEU-4 (Papineni et al.) on lower-cased word tokens, several references each, 0 to 1.

    Clipped n-gram precisions over the whole corpus, geometric mean, brevity penalty against the
    reference closest in length; no smoothing, so a corpus without any matching 4-gram scores 0.
    """
    _check_lengths(predictions, references)
    matched = [0] * max_n
    total = [0] * max_n
    hyp_length = ref_length = 0
    for prediction, refs in zip(predictions, references):
        hyp = _words(prediction)
        ref_tokens = [_words(r) for r in refs]
        hyp_length += len(hyp)
        ref_length += min((abs(len(r) - len(hyp)), len(r)) for r in ref_tokens)[1]
        for n in range(1, max_n + 1):
            counts = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
            most: Counter = Counter()
            for ref in ref_tokens:
                for gram, c in Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1)).items():
                    most[gram] = max(most[gram], c)
            matched[n - 1] += sum(min(c, most[g]) for g, c in counts.items())
            total[n - 1] += max(len(hyp) - n + 1, 0)
    if hyp_length == 0 or min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total)) / max_n
    brevity = 1.0 if hyp_length > ref_length else math.exp(1 - ref_length / hyp_length)
    return brevity * math.exp(log_precision)


def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """The (type, first, last) chunks of an IOB tag sequence, as conlleval and seqeval read them.

    A chunk starts at B-X, or at I-X that does not continue a chunk of type X (IOB1 style), and
    runs while I-X follows. A tag without a prefix counts as I-.
    """
    chunks: set[tuple[str, int, int]] = set()
    kind: str | None = None
    start = 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-") if "-" in tag else (("O", "", "") if tag == "O" else ("I", "", tag))
        if kind is not None and (prefix != "I" or label != kind):
            chunks.add((kind, start, i - 1))
            kind = None
        if prefix in ("B", "I") and kind is None:
            kind, start = label, i
    return chunks


def entity_f1(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level micro precision, recall and F1 over IOB-tagged sentences (seqeval's default)."""
    _check_lengths(predictions, references)
    found = relevant = correct = 0
    for pred, ref in zip(predictions, references):
        p, r = entities(pred), entities(ref)
        found, relevant, correct = found + len(p), relevant + len(r), correct + len(p & r)
    precision = correct / found if found else 0.0
    recall = correct / relevant if relevant else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and token F1 as the official SQuAD (v1.1/v2) script, best over the gold answers,
    as fractions (0 to 1). An unanswerable question has no gold answer: only "" is right."""
    _check_lengths(predictions, references)
    exact = f1 = 0.0
    for prediction, golds in zip(predictions, references):
        golds = [g for g in golds if normalize_answer(g)] or [""]
        exact += max(float(normalize_answer(prediction) == normalize_answer(g)) for g in golds)
        f1 += max(_token_f1(prediction, g) for g in golds)
    return {"exact_match": exact / len(predictions), "f1": f1 / len(predictions)}


def _token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def word_error_rate(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Word edit distance over reference words, corpus-wide, case and punctuation ignored."""
    _check_lengths(predictions, references)
    errors = words = 0
    for prediction, reference in zip(predictions, references):
        hyp, ref = _plain_words(prediction), _plain_words(reference)
        errors += _edit_distance(hyp, ref)
        words += len(ref)
    if words == 0:
        raise ValueError("word error rate needs references with words")
    return errors / words


def _plain_words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


def _edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (ties take their average rank); NaN when either side is constant."""
    _check_lengths(x, y)
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / var if var else math.nan


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


def iou(a: Box, b: Box) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def mean_average_precision(predictions: Sequence[Sequence[tuple[str, float, Box]]],
                           references: Sequence[Sequence[tuple[str, Box]]]) -> dict[str, float]:
    """COCO-style box mAP: AP per class with 101-point interpolation, averaged over the classes that
    have ground truth and over IoU thresholds 0.50:0.05:0.95 (``map``), and at 0.50 (``map_50``).

    Predictions are (label, score, box) per image, references (label, box).
    """
    _check_lengths(predictions, references)
    classes = sorted({label for refs in references for label, _ in refs})
    if not classes:
        return {"map": math.nan, "map_50": math.nan}
    thresholds = [0.5 + 0.05 * i for i in range(10)]
    per_threshold = {t: [_average_precision(predictions, references, c, t) for c in classes]
                     for t in thresholds}
    mean = {t: sum(aps) / len(aps) for t, aps in per_threshold.items()}
    return {"map": sum(mean.values()) / len(mean), "map_50": mean[0.5]}


def _average_precision(predictions, references, label: str, threshold: float) -> float:
    detections = sorted(((score, image, box) for image, preds in enumerate(predictions)
                         for lab, score, box in preds if lab == label), key=lambda d: -d[0])
    truth = {image: [box for lab, box in refs if lab == label] for image, refs in enumerate(references)}
    n_truth = sum(len(boxes) for boxes in truth.values())
    used = {image: [False] * len(boxes) for image, boxes in truth.items()}
    tp = fp = 0
    curve: list[tuple[float, float]] = []  # (recall, precision) after each detection
    for _, image, box in detections:
        best, best_iou = -1, threshold
        for k, gt in enumerate(truth[image]):
            overlap = iou(box, gt)
            if not used[image][k] and overlap >= best_iou:
                best, best_iou = k, overlap
        if best >= 0:
            used[image][best] = True
            tp += 1
        else:
            fp += 1
        curve.append((tp / n_truth, tp / (tp + fp)))
    # Precision envelope (best precision at this recall or beyond), sampled at 101 recall points.
    envelope = [p for _, p in curve]
    for i in range(len(envelope) - 2, -1, -1):
        envelope[i] = max(envelope[i], envelope[i + 1])
    total = 0.0
    for point in (i / 100 for i in range(101)):
        reached = next((k for k, (r, _) in enumerate(curve) if r >= point - 1e-12), None)
        total += envelope[reached] if reached is not None else 0.0
    return total / 101
