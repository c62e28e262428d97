"""Which tokens a masked-modeling step shows its encoder: MultiMAE's multimodal sampling.

Per example, a Dirichlet draw splits a fixed budget of visible tokens between the present
modalities (Bachmann et al., 2022, "MultiMAE", Section 3.3); within a modality the visible
tokens are a uniformly random subset. Everything is stateless and of static shape, so a
step runs under `jit_compile` and draws the same tokens for an example on any number of
replicas.
"""

import math

import tensorflow as tf

# Candidates per Marsaglia-Tsang draw: each is accepted with probability >= 0.95 for any
# shape >= 1, so all 8 fail with probability below 4e-11 (the draw then falls back to the
# mode, d, rather than looping: loops of unknown length do not compile with XLA).
GAMMA_TRIES = 8
# Log priority of a token that may not be shown (absent, padding): above any real one.
NEVER = 3.0e38


def log_gamma_draws(shape, concentration, seed):
    """float32 logarithms of Gamma(`concentration`, 1) draws of `shape`, stateless and
    XLA-compatible.

    Marsaglia and Tsang (2000), "A Simple Method for Generating Gamma Variables": for shape
    a >= 1, with d = a - 1/3 and c = 1 / sqrt(9 d), x ~ N(0, 1) and v = (1 + c x)^3, accept
    d v when v > 0 and log u < x^2 / 2 + d - d v + d log v (u ~ U(0, 1)). For a < 1, a draw
    of shape a + 1 times u^(1/a) has shape a. Logarithms, because for a small a that
    product underflows float32 to 0 (a share of 0 would hide a present modality).
    (`tf.random.stateless_gamma` has no XLA kernel.)

    Args:
        shape: the output shape.
        concentration: float > 0, the shape parameter a.
        seed: int `[2]`, the stateless seed.
    """
    boost = concentration < 1.0
    a = concentration + 1.0 if boost else concentration
    d = a - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    seeds = tf.random.experimental.stateless_split(seed, 3)
    shape = tf.convert_to_tensor(shape, tf.int32)
    tries = tf.concat([[GAMMA_TRIES], shape], axis=0)
    x = tf.random.stateless_normal(tries, seeds[0])
    u = tf.random.stateless_uniform(tries, seeds[1], minval=1e-12)
    v = (1.0 + c * x) ** 3
    log_v = tf.math.log(tf.maximum(v, 1e-30))
    accepted = (v > 0) & (tf.math.log(u) < 0.5 * x**2 + d - d * v + d * log_v)
    first = tf.argmax(tf.cast(accepted, tf.int32), axis=0)  # the first accepted try
    log_draws = tf.experimental.numpy.take_along_axis(log_v, first[None], axis=0)[0]
    log_draws = tf.where(tf.reduce_any(accepted, axis=0), log_draws, 0.0) + math.log(d)
    if boost:
        u_boost = tf.random.stateless_uniform(shape, seeds[2], minval=1e-12)
        log_draws = log_draws + tf.math.log(u_boost) / concentration
    return log_draws


def dirichlet_log_shares(present, log_gamma):
    """Each example's split of the visible budget between its present modalities, as logs.

    Gamma(a, 1) draws normalised over the modalities present in an example are a
    Dirichlet(a, ..., a) draw over those (MultiMAE: a = 1, every split equally likely):
    here a softmax of their logarithms over the present ones.

    Args:
        present: bool `[B, M]`, whether each example holds each modality.
        log_gamma: float `[B, M]`, logarithms of Gamma(a, 1) draws (`log_gamma_draws`).

    Returns:
        float32 `[B, M]`: log shares, -inf for an absent modality (every one, for an
        example with none present).
    """
    logits = tf.where(present, log_gamma, -math.inf)
    total = tf.reduce_logsumexp(logits, axis=1, keepdims=True)
    return tf.where(present, logits - total, -math.inf)


def sample_visible_tokens(available, log_shares, num_visible, noise):
    """Picks `num_visible` tokens per example, split between modalities by the shares.

    Within modality m the tokens are ranked in the random order of `noise`; its k-th
    token (k = 0, 1, ...) gets the priority (k + 1/2) / share_m and the `num_visible`
    tokens of lowest priority over all modalities are shown. This is the Sainte-Laguë
    (Webster) apportionment of the budget in the proportions of the shares (share_m x
    num_visible rounded, after a common scaling that makes the counts sum to exactly
    `num_visible`); a modality with fewer available tokens than its part gives the rest to
    the others. A token that is not available (its modality absent, or padding) is never
    shown. Priorities are compared as logarithms, so a tiny share cannot overflow them.

    Args:
        available: list of bool `[B, N_m]`, one per modality, the tokens that may be shown.
        log_shares: float `[B, M]`, each example's log split (`dirichlet_log_shares`),
            -inf for a modality that gets nothing.
        num_visible: int, the budget K; at most the tokens an example has available
            (fewer are shown where an example has fewer).
        noise: list of float `[B, N_m]` in [0, 1), the random order within each modality.

    Returns:
        `(indices, valid, visible)`: int32 `[B, K]` positions in the modalities'
        concatenated tokens, bool `[B, K]` whether each is a real (available) token, and
        a list of bool `[B, N_m]`, the tokens shown.
    """
    log_priorities = []
    for m, (mask, order) in enumerate(zip(available, noise)):
        order = tf.where(mask, order, 2.0)  # unavailable tokens rank last
        rank = tf.argsort(tf.argsort(order, axis=1), axis=1)
        log_share = log_shares[:, m : m + 1]
        log_priority = tf.math.log(tf.cast(rank, tf.float32) + 0.5) - log_share
        shown_ever = mask & tf.math.is_finite(log_share)
        log_priorities.append(tf.where(shown_ever, log_priority, NEVER))
    log_priority = tf.concat(log_priorities, axis=1)
    lowest, indices = tf.math.top_k(-log_priority, k=num_visible)
    valid = -lowest < NEVER
    rows = tf.broadcast_to(tf.range(tf.shape(indices)[0])[:, None], tf.shape(indices))
    shown = tf.scatter_nd(
        tf.stack([rows, indices], axis=-1), tf.cast(valid, tf.int32), tf.shape(log_priority)
    )
    sizes = [mask.shape[1] for mask in available]
    return indices, valid, tf.split(shown > 0, sizes, axis=1)
