"""Sparse upcycling: a mixture-of-experts encoder started from a trained dense encoder."""

import numpy as np

from mm_keras.encoders.shared_encoder import SharedEncoder


def upcycle(
    dense, num_modalities, moe, moe_every=2, modality_norms=False, noise_std=0.0, seed=None
):
    """Builds a `SharedEncoder` whose every expert starts as a copy of the dense MLP.

    Sparse upcycling (Komatsuzaki et al., 2023) and CLIP-MoE (Zhang et al., 2024): attention,
    norms and dense MLPs are copied as they are; in each sparse block, every expert gets the
    dense block's MLP weights (plus Gaussian noise of `noise_std` times each weight's
    standard deviation, so that experts can diverge); routers start from scratch. With
    `top_k >= 2` (gates renormalized to sum to 1) and a capacity that drops nothing, the
    upcycled encoder computes exactly what the dense one did; with `top_k=1` each sparse
    MLP's output is scaled by its router probability until the router learns.

    Args:
        dense: a built `TransformerEncoder`.
        num_modalities: int, modality ids the new encoder will see.
        moe: dict of `MoEFeedForward` arguments (`num_experts`, `top_k`, ...).
        moe_every: int, every `moe_every`-th block becomes sparse.
        modality_norms: bool, give each modality its own copy of every LayerNorm.
        noise_std: float, relative noise added to each expert's copy.
        seed: optional int, seed of that noise.

    Returns:
        A built `SharedEncoder`.

    Example:
    >>> sparse = upcycle(dense_encoder, num_modalities=2,
    ...                  moe={"num_experts": 8, "top_k": 2}, noise_std=0.01)
    """
    if not dense.built:
        raise ValueError("Expected a built (trained) dense encoder. Received an unbuilt one.")
    if isinstance(dense.intermediate_dim, list) or dense.merge_tokens or dense.nested_fractions:
        raise ValueError(
            "Expected a plain dense encoder: one MLP width, no nested MLPs or token merging. "
            f"Received: intermediate_dim={dense.intermediate_dim}, "
            f"nested_fractions={dense.nested_fractions}, merge_tokens={dense.merge_tokens}"
        )
    width = dense.final_norm.gamma.shape[0]
    encoder = SharedEncoder(
        dense.num_layers,
        dense.num_heads,
        dense.intermediate_dim,
        num_modalities,
        moe=moe,
        moe_every=moe_every,
        modality_norms=modality_norms,
        dropout=dense.dropout,
        activation=dense.activation,
        layer_norm_epsilon=dense.layer_norm_epsilon,
        dtype=dense.dtype_policy,
    )
    encoder.build({"tokens": (None, None, width), "mask": (None, None)})
    rng = np.random.default_rng(seed)

    def noisy_copies(weight, count):
        value = np.asarray(weight)
        noise = rng.normal(size=(count, *value.shape)) * noise_std * value.std()
        return (value[None] + noise).astype(value.dtype)

    for source, target in zip(dense.blocks, encoder.blocks):
        target.attention.set_weights(source.attention.get_weights())
        for index, name in enumerate(("attention_norm", "mlp_norm")):
            norm = getattr(source, name)
            if modality_norms:
                target.norm_gamma[:, index].assign(np.tile(norm.gamma, (num_modalities, 1)))
                target.norm_beta[:, index].assign(np.tile(norm.beta, (num_modalities, 1)))
            else:
                getattr(target, name).set_weights(norm.get_weights())
        if target.moe:
            experts = target.feed_forward
            count = experts.num_experts
            for variables, weight in (
                (experts.expert_in_kernels, source.mlp_in.kernel),
                (experts.expert_in_biases, source.mlp_in.bias),
                (experts.expert_out_kernels, source.mlp_out.kernel),
                (experts.expert_out_biases, source.mlp_out.bias),
            ):
                for variable, copy in zip(variables, noisy_copies(weight, count)):
                    variable.assign(copy)
        else:
            target.mlp_in.set_weights(source.mlp_in.get_weights())
            target.mlp_out.set_weights(source.mlp_out.get_weights())
    encoder.final_norm.set_weights(dense.final_norm.get_weights())
    return encoder
