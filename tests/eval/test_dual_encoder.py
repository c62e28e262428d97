"""evaluate_dual_encoder: exact-pair recall of a perfect and a shuffled pairing, zero-shot."""

import numpy as np
import pytest

from mm_keras.eval import evaluate_dual_encoder

N = 200


class _Lookup:
    """A 'model' whose embedding of item i of either modality is a fixed unit vector."""

    def __init__(self, vectors):
        self.vectors = vectors

    def predict(self, inputs, batch_size=None, verbose=0):
        ((modality, ids),) = inputs.items()
        return {modality: self.vectors[modality][np.asarray(ids)]}


def _vectors(seed=0):
    rows = np.random.default_rng(seed).normal(size=(N, 32)).astype("float32")
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_a_perfect_pairing_scores_recall_one_and_a_shuffled_one_about_one_in_n():
    vectors = _vectors()
    examples = {"image": np.arange(N), "audio": np.arange(N)}
    perfect = evaluate_dual_encoder(
        _Lookup({"image": vectors, "audio": vectors}), examples, ("image", "audio")
    )
    assert perfect["recall_kind"] == "exact_pair" and "zero_shot_top1" not in perfect
    for key in ("recall_at_1_image_to_audio", "recall_at_1_audio_to_image"):
        assert perfect[key] == 1.0

    shuffled_vectors = vectors[np.random.default_rng(1).permutation(N)]
    shuffled = evaluate_dual_encoder(
        _Lookup({"image": vectors, "audio": shuffled_vectors}), examples, ("image", "audio")
    )
    assert shuffled["recall_at_1_image_to_audio"] <= 5 / N  # chance is 1/N
    assert shuffled["recall_at_10_image_to_audio"] <= 30 / N  # chance is 10/N


class _Tokenizer:
    def __init__(self, captions):
        self.index = {caption: i for i, caption in enumerate(captions)}

    def __call__(self, texts):
        return {"token_ids": np.array([self.index[t] for t in texts])}


def test_labels_give_zero_shot_and_label_aware_recall_over_distinct_captions():
    # Four classes; an image embeds as its class's direction, a caption as its class's.
    classes = np.eye(4, dtype="float32")
    labels = np.arange(20) % 4
    captions = [f"class {label}" for label in labels]
    prompts = [[f"class {c}"] for c in range(4)]
    tokenizer = _Tokenizer([f"class {c}" for c in range(4)])
    model = _Lookup({"image": classes[labels], "text": classes})
    examples = {"image": np.arange(20), "text": np.array(captions), "label": labels}
    metrics = evaluate_dual_encoder(
        model, examples, ("image", "text"), tokenizer, class_prompts=prompts, label_aware=True
    )
    assert metrics["zero_shot_top1"] == 1.0 and metrics["recall_kind"] == "label_aware"
    assert metrics["recall_at_1_text_to_image"] == 1.0


def test_zero_shot_without_labels_is_refused():
    examples = {"image": np.arange(4), "audio": np.arange(4), "label": np.full(4, -1)}
    with pytest.raises(ValueError, match="need a label for every example"):
        evaluate_dual_encoder(_Lookup({}), examples, ("image", "audio"), label_aware=True)
