import pytest

from tracker.quality import accuracy, macro_f1, rouge
from tracker.tasks import get_task


def test_rouge_identical_and_disjoint():
    assert rouge(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(
        {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})
    assert rouge(["dogs bark loudly"], ["the cat sat"])["rouge1"] == 0.0


def test_rouge1_hand_worked():
    # prediction "the cat ran" vs reference "the cat sat down": 2 unigrams shared,
    # precision 2/3, recall 2/4, F1 = 2*(2/3)*(1/2)/((2/3)+(1/2)) = 4/7.
    assert rouge(["the cat ran"], ["the cat sat down"])["rouge1"] == pytest.approx(4 / 7)


def test_accuracy_and_macro_f1_hand_worked():
    refs = ["pos", "pos", "neg", "neg"]
    preds = ["pos", "neg", "neg", "neg"]
    assert accuracy(preds, refs) == 0.75
    # pos: tp1 fp0 fn1 -> F1 2/3; neg: tp2 fp1 fn0 -> F1 4/5; macro = (2/3 + 4/5) / 2
    assert macro_f1(preds, refs) == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError):
        accuracy(["a"], ["a", "b"])


def test_classification_labels_map_across_spellings():
    task = get_task("text-classification")
    spec = task.datasets["imdb"]
    assert task.references([0, 1, "POS", "neg"], spec) == ["negative", "positive", "positive", "negative"]
    assert task._normalise("LABEL_1") == "positive"
    assert task._normalise("POSITIVE") == "positive"
