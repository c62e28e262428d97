"""Weight inheritance: a smaller model that starts from a trained one's weights (TinyCLIP)."""

import numpy as np


def evenly_spaced_layers(num_layers, num_kept):
    """Indices of `num_kept` of `num_layers` layers, evenly spaced, first and last kept.

    Example:
    >>> evenly_spaced_layers(12, 4)
    [0, 4, 7, 11]
    """
    if not 1 <= num_kept <= num_layers:
        raise ValueError(
            f"Expected 1 <= num_kept <= num_layers. Received: num_kept={num_kept}, "
            f"num_layers={num_layers}"
        )
    return [int(i) for i in np.round(np.linspace(0, num_layers - 1, num_kept))]


def _children(layer):
    return list(layer._flatten_layers(include_self=False, recursive=False))


def _own_weights(layer):
    """The weights a layer holds itself, not through a sublayer, in tracking order."""
    inner = {id(w) for child in _children(layer) for w in child.weights}
    return [w for w in layer.weights if id(w) not in inner]


def _weight_pairs(teacher, student):
    """(teacher weight, student weight) pairs, walking both layer trees side by side.

    Layers with a `blocks` list (encoders) may keep fewer blocks: student block i pairs
    with teacher block `evenly_spaced_layers(...)[i]`. Everything else pairs one to one.
    """
    teacher_weights, student_weights = _own_weights(teacher), _own_weights(student)
    if type(teacher) is not type(student) or len(teacher_weights) != len(student_weights):
        raise ValueError(
            "Expected the student to mirror the teacher's structure. Received: "
            f"{type(student).__name__} {student.name!r} with weights "
            f"{[w.name for w in student_weights]} where the teacher has "
            f"{type(teacher).__name__} {teacher.name!r} with {[w.name for w in teacher_weights]}"
        )
    pairs = list(zip(teacher_weights, student_weights))
    teacher_children, student_children = _children(teacher), _children(student)
    blocks = getattr(teacher, "blocks", None)
    if isinstance(blocks, list) and blocks:
        kept = evenly_spaced_layers(len(blocks), len(student.blocks))
        for index, block in zip(kept, student.blocks):
            pairs += _weight_pairs(blocks[index], block)
        teacher_children = [c for c in teacher_children if c not in blocks]
        student_children = [c for c in student_children if c not in student.blocks]
    if len(teacher_children) != len(student_children):
        raise ValueError(
            f"Expected {student.name!r} to have as many sublayers as {teacher.name!r}. "
            f"Received: {[c.name for c in student_children]} for "
            f"{[c.name for c in teacher_children]}"
        )
    for t, s in zip(teacher_children, student_children):
        pairs += _weight_pairs(t, s)
    return pairs


def inherit_weights(teacher, student):
    """Copies into `student` the leading slice of each of `teacher`'s weights.

    TinyCLIP's manual weight inheritance (Wu et al., 2023): the student keeps evenly spaced
    layers of the teacher, and in each kept weight the leading rows and columns, that is
    the first attention heads (mm_keras stores heads on their own axis, `[D, 3, H, d_k]`),
    the first hidden units and the first MLP units. Both models must be built and have the
    same structure, the student no larger than the teacher along any axis; when the
    student keeps every layer and unit, it computes exactly what the teacher does.

    Args:
        teacher: a built model or layer, e.g. a trained `DualEncoder`.
        student: a built model or layer of the same structure, e.g. from `shrink`.

    Returns:
        The number of weights copied.

    Example:
    >>> student = DualEncoder.from_config(smaller_config)
    >>> student.build()
    >>> inherit_weights(teacher, student)
    """
    if not (teacher.built and student.built):
        raise ValueError(
            f"Expected built models. Received: teacher built={teacher.built}, "
            f"student built={student.built}"
        )
    pairs = _weight_pairs(teacher, student)
    for t, s in pairs:
        if len(t.shape) != len(s.shape) or any(a < b for a, b in zip(t.shape, s.shape)):
            raise ValueError(
                f"Expected each student weight to fit inside its teacher weight. Received: "
                f"{s.path} {tuple(s.shape)} for {t.path} {tuple(t.shape)}"
            )
        s.assign(np.asarray(t)[tuple(slice(0, n) for n in s.shape)])
    return len(pairs)


def _encoder_configs(node):
    """Every encoder config (a dict with num_layers, num_heads, intermediate_dim) in a tree."""
    if isinstance(node, dict):
        if {"num_layers", "num_heads", "intermediate_dim"} <= set(node):
            yield node
        for value in node.values():
            yield from _encoder_configs(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _encoder_configs(value)


def _shrunk(node, head_fraction, depth_fraction):
    if isinstance(node, (list, tuple)):
        return type(node)(_shrunk(v, head_fraction, depth_fraction) for v in node)
    if not isinstance(node, dict):
        return node
    # A built layer's config records its input shapes, which are the teacher's: drop them.
    node = {
        k: _shrunk(v, head_fraction, depth_fraction) for k, v in node.items() if k != "build_config"
    }
    if {"num_layers", "num_heads", "intermediate_dim"} <= set(node):
        layers = node["num_layers"]
        node["num_layers"] = max(1, round(layers * depth_fraction))
        node["num_heads"] = round(node["num_heads"] * head_fraction)
        widths = node["intermediate_dim"]
        if isinstance(widths, list):  # one per block (Mix'n'Match): those of the kept blocks
            kept = evenly_spaced_layers(layers, node["num_layers"])
            node["intermediate_dim"] = [max(1, round(widths[i] * head_fraction)) for i in kept]
        else:
            node["intermediate_dim"] = max(1, round(widths * head_fraction))
    if "hidden_dim" in node:
        node["hidden_dim"] = round(node["hidden_dim"] * head_fraction)
    return node


def shrink(teacher, width_fraction=0.5, depth_fraction=1.0):
    """A smaller copy of `teacher` that inherits its weights, built.

    Keeps `round(H · width_fraction)` of the H attention heads of every encoder (each head
    keeps its size, so the token width shrinks by the same fraction, as do the
    tokenizers' `hidden_dim` and the MLPs' `intermediate_dim`) and
    `round(L · depth_fraction)` evenly spaced layers of L, then copies the teacher's
    weights over with `inherit_weights`. The joint embedding size (`projection_dim`) is
    kept, so student and teacher embeddings can be compared directly.

    Args:
        teacher: a built model whose config holds its encoders' `num_layers`, `num_heads`
            and `intermediate_dim` and its tokenizers' `hidden_dim` (a `DualEncoder`).
        width_fraction: float in (0, 1], fraction of heads and units kept.
        depth_fraction: float in (0, 1], fraction of layers kept.

    Returns:
        The built student.

    Example:
    >>> student = shrink(teacher, width_fraction=0.5)   # half the heads and units
    >>> student.count_params() / teacher.count_params()
    0.31
    """
    if not (0 < width_fraction <= 1 and 0 < depth_fraction <= 1):
        raise ValueError(
            "Expected fractions in (0, 1]. Received: "
            f"width_fraction={width_fraction}, depth_fraction={depth_fraction}"
        )
    config = teacher.get_config()
    heads = {encoder["num_heads"] for encoder in _encoder_configs(config)}
    if len(heads) != 1:
        raise ValueError(
            f"Expected encoders with one number of heads. Received: num_heads in {sorted(heads)}"
        )
    num_heads = heads.pop()
    kept_heads = round(num_heads * width_fraction)
    if kept_heads < 1:
        raise ValueError(
            f"width_fraction={width_fraction} keeps no head of {num_heads}: expected at least "
            f"1 / {num_heads}"
        )
    student = type(teacher).from_config(_shrunk(config, kept_heads / num_heads, depth_fraction))
    student.build()
    inherit_weights(teacher, student)
    return student
