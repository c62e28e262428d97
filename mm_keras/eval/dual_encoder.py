"""A dual encoder on a split: zero-shot accuracy and recall@K in both directions."""

import numpy as np

from mm_keras.eval.retrieval import recall_at_k
from mm_keras.eval.zero_shot import zero_shot_accuracy, zero_shot_classifier

EXACT_PAIR = "exact_pair"
LABEL_AWARE = "label_aware"


def evaluate_dual_encoder(
    model,
    examples,
    modalities,
    tokenizer=None,
    class_prompts=None,
    label_aware=False,
    ks=(1, 5, 10),
    batch_size=256,
):
    """Zero-shot top-1 (given class prompts) and recall@K both ways, for `metrics.json`.

    Recall is exact-pair by default (a hit is the query's own partner, COCO/Flickr style),
    the figure for data paired instance by instance. With `label_aware`, a hit is any
    item of the query's class, for data whose items fit a whole class; text queries and
    keys are then the split's distinct captions, since copies of one caption would fill a
    query's top K and make recall@5/10 repeat recall@1.

    Args:
        model: a `DualEncoder` (or any model mapping `{modality: inputs}` to unit-norm
            embeddings).
        examples: dict of equally long arrays: one per modality (text as strings), and
            `"label"` (int, -1 where unknown) for zero-shot and label-aware recall.
        modalities: the two modalities, (query, key) of the first direction.
        tokenizer: the text tokenizer, when `"text"` is a modality.
        class_prompts: optional list with a list of prompt strings per class; zero-shot
            accuracy of the other modality is measured when given and text is a modality.
        label_aware: bool, label-aware recall instead of exact-pair.
        ks: the cut-offs K.
        batch_size: int, examples embedded at once.

    Returns:
        A dict: `recall_at_{k}_{query}_to_{key}` for both directions, `zero_shot_top1`
        when measured, and `recall_kind` (`"exact_pair"` or `"label_aware"`).

    Example:
    >>> evaluate_dual_encoder(model, {"image": images, "text": captions}, ("image", "text"),
    ...                       tokenizer)
    {'recall_at_1_image_to_text': 0.41, ..., 'recall_kind': 'exact_pair'}
    """
    modalities = tuple(modalities)
    if len(modalities) != 2 or any(m not in examples for m in modalities):
        raise ValueError(
            "Expected two modalities, each with an array in `examples`. "
            f"Received: modalities={modalities}, examples with {sorted(examples)}"
        )
    if "text" in modalities and tokenizer is None:
        raise ValueError("Expected a `tokenizer` to embed the 'text' modality. Received: None")
    labels = examples.get("label")
    if (label_aware or class_prompts is not None) and (
        labels is None or np.any(np.asarray(labels) < 0)
    ):
        raise ValueError(
            "Zero-shot accuracy and label-aware recall need a label for every example. "
            "Received: " + ("no 'label'" if labels is None else "examples without a label (-1)")
        )
    inputs, item_labels = {}, {}
    for m in modalities:
        values = examples[m]
        if label_aware:
            item_labels[m] = np.asarray(labels)
        if m == "text":
            captions = [v.decode() if isinstance(v, bytes) else str(v) for v in values]
            if label_aware:
                captions, first = np.unique(captions, return_index=True)
                item_labels[m] = np.asarray(labels)[first]
                captions = captions.tolist()
            values = tokenizer(captions)["token_ids"]
        inputs[m] = values
    embeddings = {  # one modality at a time: the two sets may differ in size
        m: model.predict({m: x}, batch_size=batch_size, verbose=0)[m] for m, x in inputs.items()
    }
    metrics = {}
    if class_prompts is not None and "text" in modalities:
        other = next(m for m in modalities if m != "text")
        classifier = zero_shot_classifier(model, tokenizer, class_prompts, batch_size=batch_size)
        metrics["zero_shot_top1"] = zero_shot_accuracy(embeddings[other], classifier, labels)
    for query, key in (modalities, modalities[::-1]):
        recall = recall_at_k(
            embeddings[query], embeddings[key], ks, item_labels.get(query), item_labels.get(key)
        )
        for k, value in recall.items():
            metrics[f"recall_at_{k}_{query}_to_{key}"] = value
    metrics["recall_kind"] = LABEL_AWARE if label_aware else EXACT_PAIR
    return metrics
