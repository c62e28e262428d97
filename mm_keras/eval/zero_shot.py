"""Zero-shot classification: classes described by text prompts, no classifier training."""

import numpy as np


def zero_shot_classifier(model, tokenizer, class_prompts, modality="text", batch_size=256):
    """Embeds each class's prompts and averages them into one unit vector per class.

    Prompt ensembling of CLIP (Radford et al., 2021, section 3.1.4): a class's weight is the
    normalized mean of the embeddings of its prompts.

    Args:
        model: a `DualEncoder` (or any model mapping `{modality: inputs}` to unit-norm
            embeddings).
        tokenizer: the `TextTokenizer` the model was trained with.
        class_prompts: list with one non-empty list of prompt strings per class.
        modality: the model's text modality name.
        batch_size: int, prompts embedded at once.

    Returns:
        float32 `[num_classes, D]`, one unit-norm row per class.

    Example:
    >>> weights = zero_shot_classifier(model, tokenizer, [["a zero"], ["a one"]])
    >>> weights.shape
    (2, 64)
    """
    if not class_prompts or any(
        not isinstance(prompts, (list, tuple)) or not prompts for prompts in class_prompts
    ):
        raise ValueError(
            "Expected one non-empty list of prompts per class. Received: "
            f"{[p if isinstance(p, str) else len(p) for p in class_prompts]} "
            "(a prompt count per class, or a bare string where a list was expected)"
        )
    flat = [prompt for prompts in class_prompts for prompt in prompts]
    token_ids = tokenizer(flat)["token_ids"]
    embeddings = model.predict({modality: token_ids}, batch_size=batch_size, verbose=0)
    return prompt_ensemble(embeddings[modality], [len(prompts) for prompts in class_prompts])


def prompt_ensemble(prompt_embeddings, prompts_per_class):
    """Class weights from prompt embeddings listed class by class: normalized means.

    Args:
        prompt_embeddings: float `[sum(prompts_per_class), D]`, class 0's prompts first.
        prompts_per_class: list of ints, how many prompts each class has.

    Returns:
        float32 `[num_classes, D]`, one unit-norm row per class.
    """
    weights, start = [], 0
    for count in prompts_per_class:
        mean = np.asarray(prompt_embeddings[start : start + count]).mean(axis=0)
        weights.append(mean / np.linalg.norm(mean))
        start += count
    return np.stack(weights).astype(np.float32)


def zero_shot_accuracy(embeddings, classifier, labels, chunk_size=4096):
    """Top-1 accuracy of assigning each embedding to its most similar class weight.

    Args:
        embeddings: float `[N, D]`, unit-norm embeddings (e.g. of images).
        classifier: float `[C, D]`, from `zero_shot_classifier`.
        labels: int `[N]`, the true classes.
        chunk_size: int, rows scored at once.

    Returns:
        Python float in [0, 1].
    """
    embeddings, labels = np.asarray(embeddings), np.asarray(labels)
    if len(embeddings) != len(labels) or len(labels) == 0:
        raise ValueError(
            "Expected one label per embedding, and at least one. "
            f"Received: {len(embeddings)} embeddings and {len(labels)} labels"
        )
    correct = 0
    for start in range(0, len(labels), chunk_size):
        predicted = np.argmax(embeddings[start : start + chunk_size] @ classifier.T, axis=1)
        correct += int(np.sum(predicted == labels[start : start + chunk_size]))
    return correct / len(labels)
