"""The generate-mode report's arithmetic: log-likelihood agreement and one example per task."""

from llava_compare.demo.user_report import agreement, examples


def _rec(i, task, pred, gold=0, parsed=True):
    return {"id": i, "task": task, "options": ["Image 1", "Image 2"], "chance": 0.5, "pred_index": pred,
            "correct": pred == gold, "parsed": parsed, "question": f"q{i}", "generated": f"Image {pred}",
            "answer": "Image 1", "num_images": 2}


def test_agreement_counts_same_option_and_unparsed_answers_as_disagreeing():
    gen = [_rec(1, "blur", 0), _rec(2, "blur", 1), _rec(3, "count", None, parsed=False), _rec(4, "count", 0)]
    ll = [_rec(1, "blur", 0), _rec(2, "blur", 0), _rec(3, "count", 0), _rec(4, "count", 0)]
    a = agreement(gen, ll)
    assert a == {"n": 4, "agreement": 0.5, "loglik_accuracy": 1.0, "unparsed": 1}


def test_examples_take_the_first_item_of_distinct_tasks():
    recs = [_rec(1, "blur", 0), _rec(2, "blur", 1), _rec(3, "count", 0), _rec(4, "sharpest", 1)]
    shown = examples(recs, 2)
    assert [e["task"] for e in shown] == ["blur", "count"]
    assert shown[0]["question"] == "q1" and shown[0]["gold"] == "Image 1"
