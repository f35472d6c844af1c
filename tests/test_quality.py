import math

import pytest

from tracker.tasks import get_task, quality
from tracker.tasks.quality import accuracy, macro_f1, rouge


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


# Hand-worked cases for the metrics of the other tasks.

def test_entity_f1_counts_whole_entities_as_seqeval_does():
    reference = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-ORG", "O"]]
    # sentence 1: PER right, LOC typed ORG (wrong); sentence 2: ORG right, plus a spurious PER
    prediction = [["B-PER", "I-PER", "O", "B-ORG", "O"], ["B-ORG", "B-PER"]]
    scores = quality.entity_f1(prediction, reference)
    assert scores["precision"] == pytest.approx(2 / 4)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))


def test_entity_chunks_follow_conlleval():
    # I- after O starts a chunk (IOB1); B- splits two adjacent chunks; a type change ends one.
    assert quality.entities(["I-PER", "I-PER", "B-PER", "I-LOC"]) == {
        ("PER", 0, 1), ("PER", 2, 2), ("LOC", 3, 3)}
    # a partial span is not a match
    assert quality.entity_f1([["B-PER", "O"]], [["B-PER", "I-PER"]])["f1"] == 0.0


def test_squad_exact_match_and_f1():
    scores = quality.squad(["The Eiffel Tower!", "in 1889 Paris", ""],
                           [["Eiffel Tower"], ["1889", "in 1889"], []])
    # 1: normalised equal (article, punctuation); 2: F1 with "in 1889" = 2*(2/3*1)/(2/3+1) = 0.8;
    # 3: unanswerable, answered "": right
    assert scores["exact_match"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx((1 + 0.8 + 1) / 3)


def test_bleu_on_a_worked_example():
    assert quality.bleu(["the cat sat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(1.0)
    # one word changed: p1 = 5/6, p2 = 3/5, p3 = 2/4, p4 = 1/3, same length (no penalty)
    assert quality.bleu(["the cat sat on a mat"], [["the cat sat on the mat"]]) == pytest.approx(
        (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    # no 4-gram in common: 0 (no smoothing)
    assert quality.bleu(["the cat on a mat"], [["the cat sat on the mat"]]) == 0.0
    # brevity penalty: 4 matching words against 6 -> exp(1 - 6/4) x 1
    assert quality.bleu(["the cat sat on"], [["the cat sat on the mat"]]) == pytest.approx(math.exp(1 - 6 / 4))
    # the closest reference length counts (a tie goes to the shorter): 2 words here, no penalty
    assert quality.bleu(["the cat sat on"], [["the cat sat on the mat", "a dog"]]) == pytest.approx(1.0)


def test_rouge_l_takes_the_best_reference():
    assert quality.rouge_l_multi(["a red circle"], [["blue squares", "a red circle"]]) == pytest.approx(1.0)


def test_word_error_rate():
    # one substitution and one deletion over 5 reference words; case and punctuation ignored
    assert quality.word_error_rate(["The cat sat mat."], ["the cat sat on the mat"]) == pytest.approx(2 / 6)
    assert quality.word_error_rate(["hello world"], ["HELLO WORLD"]) == 0.0


def test_spearman_ranks_with_ties():
    assert quality.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert quality.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties take the average rank: x ranks 1, 2.5, 2.5, 4 against 1..4 -> r = 0.9487
    assert quality.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, rel=1e-6)
    assert math.isnan(quality.spearman([1, 1, 1], [1, 2, 3]))


def test_map_of_perfect_missing_and_shifted_boxes():
    truth = [[("cat", (0, 0, 10, 10)), ("dog", (20, 20, 30, 30))]]
    perfect = [[("cat", 0.9, (0, 0, 10, 10)), ("dog", 0.8, (20, 20, 30, 30))]]
    assert quality.mean_average_precision(perfect, truth) == {"map": pytest.approx(1.0), "map_50": pytest.approx(1.0)}
    # the dog is missed: AP(cat) = 1, AP(dog) = 0 at every threshold
    only_cat = [[("cat", 0.9, (0, 0, 10, 10))]]
    assert quality.mean_average_precision(only_cat, truth)["map"] == pytest.approx(0.5)
    # a box shifted by 2 px: IoU = 8x10 / (2x100 - 80) = 2/3, a match at 0.50, 0.55, 0.60, 0.65 only
    shifted = [[("cat", 0.9, (2, 0, 12, 10))]]
    scores = quality.mean_average_precision(shifted, [[("cat", (0, 0, 10, 10))]])
    assert scores["map_50"] == pytest.approx(1.0)
    assert scores["map"] == pytest.approx(4 / 10)


def test_map_ranks_detections_by_score():
    truth = [[("cat", (0, 0, 10, 10))]]
    # a wrong box scored above the right one: precision 1/2 at recall 1 -> AP 0.5
    ranked = [[("cat", 0.9, (50, 50, 60, 60)), ("cat", 0.5, (0, 0, 10, 10))]]
    assert quality.mean_average_precision(ranked, truth)["map"] == pytest.approx(0.5)


def test_generated_tokens_count_up_to_the_first_eos():
    import torch

    from tracker.tasks.base import count_generated

    eos, pad = 2, 1
    ids = torch.tensor([[5, 6, eos, pad, pad],   # 3: padding after EOS is not generated
                        [pad, pad, 7, 8, 9],     # 5: pad ids before any EOS were generated
                        [4, eos, eos, pad, pad]])  # 2
    assert count_generated(ids, eos) == 10
    assert count_generated(ids, [eos, 9]) == 10
    assert count_generated(ids, None) == 15
