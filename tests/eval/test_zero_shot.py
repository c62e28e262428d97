import numpy as np
import pytest

from mm_keras.encoders import TransformerEncoder
from mm_keras.eval import zero_shot_accuracy, zero_shot_classifier
from mm_keras.models import DualEncoder
from mm_keras.tokenizers import ImagePatchTokenizer, TextEmbedding, TextTokenizer

PROMPTS = [["a zero", "the digit zero"], ["a one"], ["a two", "the digit two", "number two"]]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    corpus = [p for prompts in PROMPTS for p in prompts] * 5
    tokenizer = TextTokenizer.train(corpus, vocabulary_size=60, sequence_length=6)
    model = DualEncoder(
        {
            "image": ImagePatchTokenizer(image_size=8, patch_size=4, hidden_dim=16),
            "text": TextEmbedding(tokenizer.vocabulary_size, 6, hidden_dim=16),
        },
        TransformerEncoder(num_layers=1, num_heads=2, intermediate_dim=32),
        projection_dim=8,
    )
    return model, tokenizer


def test_classifier_is_normalized_mean_of_prompt_embeddings(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    weights = zero_shot_classifier(model, tokenizer, PROMPTS)
    assert weights.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(weights, axis=1), 1.0, rtol=1e-5)
    two = np.asarray(model({"text": tokenizer(PROMPTS[2])["token_ids"]})["text"]).mean(axis=0)
    np.testing.assert_allclose(weights[2], two / np.linalg.norm(two), atol=1e-5)


def test_accuracy_is_argmax_over_classes():
    classifier = np.eye(3, dtype="float32")
    embeddings = np.array([[1, 0, 0], [0, 0.9, 0.1], [0.2, 0.1, 0.7], [0, 1, 0]], "float32")
    labels = np.array([0, 1, 2, 2])
    assert zero_shot_accuracy(embeddings, classifier, labels, chunk_size=3) == 0.75


def test_empty_prompt_lists_raise(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(
        ValueError, match=r"non-empty list of prompts per class. Received: \[1, 0\]"
    ):
        zero_shot_classifier(model, tokenizer, [["a one"], []])
    with pytest.raises(ValueError, match="Received: \\[\\]"):
        zero_shot_classifier(model, tokenizer, [])
    with pytest.raises(ValueError, match=r"Received: \['a one', 'a two'\]"):
        zero_shot_classifier(model, tokenizer, ["a one", "a two"])  # strings, not lists
    with pytest.raises(ValueError, match="Received: 2 embeddings and 1 labels"):
        zero_shot_accuracy(np.eye(2), np.eye(2), [0])
