"""Quality metrics computed locally (nothing is fetched from the Hub, unlike ``evaluate.load``)."""

from __future__ import annotations

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
