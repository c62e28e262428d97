"""The mixture-of-experts feed-forward layer: routers, capacity, auxiliary losses, statistics."""

import math

import keras
from keras import ops

from mm_keras.layers.activations import get_activation

ROUTERS = ("token_choice", "expert_choice", "modality")


@keras.saving.register_keras_serializable(package="mm_keras")
class RoutingStatistics(keras.metrics.Metric):
    """A mixture of experts' routing statistics since the last reset, token-weighted.

    `MoEFeedForward` updates one when training, and the mm_keras trainers report it, so
    `fit`'s training logs (and so the progress bar, TensorBoard and `CSVLogger`) show per
    epoch `<name>/expert_<e>_load` (the share of the epoch's kept token-expert assignments
    that expert e processed), `<name>/dropped_fraction` (assignments over capacity, over
    all assignments) and `<name>/router_entropy` (mean over real tokens). It keeps counts
    and sums, not per-call ratios, so calls of different sizes (the towers of a step,
    padded batches) and replicas weigh by their tokens.

    Args:
        num_experts: int, the number of experts.
        name: str, the prefix of the log entries.

    Example:
    >>> statistics = RoutingStatistics(2, name="moe")
    >>> statistics.update_state(np.array([1.0, 3.0]), 1.0, 5.0, 2.0, 5.0)
    >>> float(statistics.result()["moe/expert_1_load"])
    0.75
    """

    def __init__(self, num_experts, name="routing", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.num_experts = num_experts
        self.load = self.add_variable((num_experts,), "zeros", name="load")
        self.dropped = self.add_variable((), "zeros", name="dropped")
        self.assigned = self.add_variable((), "zeros", name="assigned")
        self.entropy = self.add_variable((), "zeros", name="entropy")
        self.tokens = self.add_variable((), "zeros", name="tokens")

    def update_state(self, load, dropped, assigned, entropy, tokens):
        """Adds a call's kept assignments per expert `[E]`, dropped and all assignments,
        summed router entropy and real tokens."""
        for variable, value in (
            (self.load, load),
            (self.dropped, dropped),
            (self.assigned, assigned),
            (self.entropy, entropy),
            (self.tokens, tokens),
        ):
            variable.assign_add(ops.cast(value, self.dtype))

    def result(self):
        load = self.load / ops.maximum(ops.sum(self.load), 1.0)
        results = {f"{self.name}/expert_{e}_load": load[e] for e in range(self.num_experts)}
        results[f"{self.name}/dropped_fraction"] = self.dropped / ops.maximum(self.assigned, 1.0)
        results[f"{self.name}/router_entropy"] = self.entropy / ops.maximum(self.tokens, 1.0)
        return results

    def get_config(self):
        return {"num_experts": self.num_experts, "name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="mm_keras")
class MoEFeedForward(keras.layers.Layer):
    """A sparse mixture of feed-forward experts, with static shapes throughout.

    Each expert is a two-layer MLP `D → intermediate_dim → D`. A router in float32 sends
    every token to some experts and the layer returns the gate-weighted sum of their
    outputs. Routing happens within groups of one sequence each (GShard's groups), so every
    buffer has a static size: tokens are dispatched into `[E, B·C, D]` expert buffers and
    combined back by row index (scatter and gather for token choice, gather and segment
    sum for expert choice), so routing costs O(B·N·k·(D + E)) and no `[B, N, E, C]`
    one-hot tensor is built. It runs under `jit_compile` and converts to TFLite builtin ops.

    Routers:
    * `"token_choice"` (Switch Transformer, Fedus et al. 2021, with `top_k=1`; GShard,
      Lepikhin et al. 2020, with `top_k=2`): each token picks its `top_k` experts. An expert
      takes at most C = ceil(capacity_factor · top_k · N / E) tokens of a sequence of N,
      first choices first, in token order; a token over capacity gets nothing from that
      expert (its residual connection carries it through) and is counted as dropped. With
      `top_k > 1` the chosen gates are renormalized to sum to 1.
    * `"expert_choice"` (Zhou et al. 2022): each expert takes the C tokens with the highest
      router probability for it, C = ceil(capacity_factor · top_k · N / E); a token no expert
      takes is dropped. Balanced by construction.
    * `"modality"` (Mixture-of-Transformers, Liang et al. 2024; MoMa, Lin et al. 2024):
      experts come in groups of `experts_per_modality`, one group per modality id, and a
      token only chooses among its modality's group, with learned top-k when the group has
      more than one expert. Capacity counts the group, not all experts.

    Auxiliary losses, added with `add_loss` when training: the Switch load-balancing loss
    `load_balance_weight · E · Σ_e f_e · P_e` (f_e: fraction of tokens whose first choice is
    expert e; P_e: mean router probability of e) and the router z-loss
    `z_loss_weight · mean(logsumexp(logits)²)` (ST-MoE, Zoph et al. 2022).

    Args:
        num_experts: int, the number of experts E.
        intermediate_dim: int, hidden width of each expert.
        router: one of `"token_choice"`, `"expert_choice"`, `"modality"`.
        top_k: int, experts per token (token choice, modality), or the average number of
            experts per token that sets the capacity (expert choice).
        capacity_factor: float, capacity over an even share of the tokens, when training.
        eval_capacity_factor: float, the same at inference (default: `capacity_factor`).
        router_jitter: float, when training, multiply the router's input by noise drawn
            uniformly from `[1 - jitter, 1 + jitter]` (Switch Transformer).
        load_balance_weight: float, coefficient of the load-balancing loss.
        z_loss_weight: float, coefficient of the router z-loss.
        num_modalities: int, the number of modality ids (modality router only).
        activation: the experts' activation.
        seed: optional int, seed of the router jitter.
        track_statistics: bool, when training a trainable layer, update
            `routing_statistics`, a `RoutingStatistics` metric, which the mm_keras
            trainers report in `fit`'s training logs: each expert's load, the dropped
            fraction and the router entropy per epoch. Keras itself does not collect it,
            so a plain `keras.Model`'s `fit` and `evaluate` logs stay as they were.

    Call arguments:
        inputs: float `[B, N, D]` tokens.
        padding_mask: optional bool `[B, N]`; padding tokens are routed nowhere and
            counted nowhere.
        modality_ids: int `[B]` or `[B, N]` (modality router only).
        training: bool.
        return_statistics: bool, also return a dict with `"expert_load"` `[E]` (fraction
            of routed token slots each expert processed), `"dropped_fraction"` (token-expert
            assignments over capacity, over all assignments; for expert choice, tokens no
            expert took) and `"router_entropy"` (mean entropy of the router's distribution).

    Example:
    >>> moe = MoEFeedForward(num_experts=8, intermediate_dim=128, top_k=1)
    >>> x = np.random.rand(2, 10, 64).astype("float32")
    >>> moe(x).shape
    (2, 10, 64)
    """

    def __init__(
        self,
        num_experts,
        intermediate_dim,
        router="token_choice",
        top_k=1,
        capacity_factor=1.25,
        eval_capacity_factor=None,
        router_jitter=0.0,
        load_balance_weight=0.01,
        z_loss_weight=0.001,
        num_modalities=None,
        activation="gelu",
        seed=None,
        track_statistics=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if router not in ROUTERS:
            raise ValueError(f"`router` must be one of {ROUTERS}. Received: router={router!r}")
        if num_experts < 1 or intermediate_dim < 1:
            raise ValueError(
                "`num_experts` and `intermediate_dim` must be >= 1. Received: "
                f"num_experts={num_experts}, intermediate_dim={intermediate_dim}"
            )
        eligible = num_experts
        if router == "modality":
            if not num_modalities or num_experts % num_modalities:
                raise ValueError(
                    "The modality router needs `num_modalities` dividing `num_experts` "
                    f"(a group of experts per modality). Received: num_experts={num_experts}, "
                    f"num_modalities={num_modalities}"
                )
            eligible = num_experts // num_modalities
        if not 1 <= top_k <= eligible:
            raise ValueError(
                f"`top_k` must be in [1, {eligible}] (the experts a token can choose from). "
                f"Received: top_k={top_k}"
            )
        for name, value in (
            ("capacity_factor", capacity_factor),
            ("eval_capacity_factor", eval_capacity_factor),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"`{name}` must be > 0. Received: {name}={value}")
        if not 0.0 <= router_jitter < 1.0:
            raise ValueError(f"`router_jitter` must be in [0, 1). Received: {router_jitter}")
        self.num_experts = num_experts
        self.intermediate_dim = intermediate_dim
        self.router = router
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.eval_capacity_factor = eval_capacity_factor
        self.router_jitter = router_jitter
        self.load_balance_weight = load_balance_weight
        self.z_loss_weight = z_loss_weight
        self.num_modalities = num_modalities
        self.activation = get_activation(activation)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.track_statistics = track_statistics
        self._eligible = eligible
        self._untracked_statistics(None)

    def build(self, inputs_shape):
        hidden_dim = inputs_shape[-1]
        experts, inner = self.num_experts, self.intermediate_dim
        self.router_kernel = self.add_weight(
            name="router_kernel",
            shape=(hidden_dim, experts),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            dtype="float32",  # routing decisions stay in float32 under mixed precision
            autocast=False,
        )

        # One variable per expert and kind, not one stacked `[E, ...]` variable each:
        # slicing that per expert and stacking the gradients back are copies, which made
        # the layer 1.06x as slow at width 256 and 1.04x at 512 with XLA on CPU
        # (`benchmarks/moe.py`, `stacked_weights_to_per_expert_time_ratio_width_<D>`).
        # The initializer keeps the stacked kernels' scale, Glorot over E·(D + F); one
        # instance per kernel, as an initializer instance repeats its draws.
        def kernel():
            return keras.initializers.VarianceScaling(1.0 / experts, "fan_avg", "uniform")

        self.expert_in_kernels, self.expert_in_biases = [], []
        self.expert_out_kernels, self.expert_out_biases = [], []
        kinds = (
            ("in_kernel", self.expert_in_kernels, (hidden_dim, inner), kernel),
            ("in_bias", self.expert_in_biases, (inner,), keras.initializers.Zeros),
            ("out_kernel", self.expert_out_kernels, (inner, hidden_dim), kernel),
            ("out_bias", self.expert_out_biases, (hidden_dim,), keras.initializers.Zeros),
        )
        for e in range(experts):
            for kind, variables, shape, initializer in kinds:
                name = f"expert_{e}_{kind}"
                variables.append(self.add_weight(name=name, shape=shape, initializer=initializer()))
        if self.track_statistics:
            self._untracked_statistics(RoutingStatistics(experts, name=self.path or self.name))

    def _untracked_statistics(self, metric):
        # Set past Keras's attribute tracking: a tracked metric would join every enclosing
        # model's `metrics`, turning a plain model's `evaluate` result into a list and its
        # validation logs into zeros. The trainers collect it (`Trainer.routing_metrics`).
        object.__setattr__(self, "routing_statistics", metric)

    def capacity(self, num_tokens, training=False):
        """Tokens each expert takes from a sequence of `num_tokens`."""
        factor = self.capacity_factor
        if not training and self.eval_capacity_factor is not None:
            factor = self.eval_capacity_factor
        capacity = math.ceil(factor * self.top_k * num_tokens / self._eligible)
        return max(1, min(capacity, num_tokens))

    def _router_logits(self, inputs, training):
        x = ops.cast(inputs, "float32")
        if training and self.router_jitter:
            x = x * keras.random.uniform(
                ops.shape(x),
                1.0 - self.router_jitter,
                1.0 + self.router_jitter,
                seed=self.seed_generator,
            )
        return ops.matmul(x, self.router_kernel)  # [B, N, E]

    def _token_choice(self, x, probs, valid, capacity):
        """Top-k routing by row indices, first choices before second ones, in token order.

        Assignment (b, j, n), token n's j-th choice e, takes slot s of expert e's buffer,
        s counting the earlier assignments to e in that order; it is kept if s < C, and
        then its row of the `[E, B·C, D]` buffers is (e·B + b)·C + s. Kept assignments are
        scattered into their rows; each gathers its row back times its gate. A dropped or
        padding assignment scatters zeros into row 0 and gets zero back.
        """
        batch, tokens, dim = ops.shape(x)[0], x.shape[1], x.shape[2]
        k, experts = self.top_k, self.num_experts
        gates, chosen = ops.top_k(probs, k)  # [B, N, k]
        if k > 1:
            gates = gates / ops.sum(gates, axis=-1, keepdims=True)
        chosen = ops.reshape(ops.transpose(chosen, (0, 2, 1)), (batch, k * tokens))
        gates = ops.reshape(ops.transpose(gates, (0, 2, 1)), (batch, k * tokens))
        valid = ops.tile(valid, (1, k))
        choice = ops.one_hot(chosen, experts) * valid[..., None]  # [B, k·N, E]
        slot = ops.sum(ops.cumsum(choice, axis=1) * choice, axis=-1) - 1.0
        kept = ops.cast(slot < capacity, "float32") * valid
        row = (chosen * batch + ops.arange(batch)[:, None]) * capacity
        row = ops.reshape(ops.where(kept > 0, row + ops.cast(slot, "int32"), 0), (-1,))
        tiled = ops.reshape(ops.tile(x, (1, k, 1)), (-1, dim))
        kept_rows = tiled * ops.cast(ops.reshape(kept, (-1, 1)), x.dtype)
        buffers = ops.scatter(row[:, None], kept_rows, (experts * batch * capacity, dim))
        out = self._experts(ops.reshape(buffers, (experts, batch * capacity, dim)))
        back = ops.take(ops.reshape(out, (-1, dim)), row, axis=0)
        back = ops.reshape(back, (batch, k, tokens, dim))
        weights = ops.cast(ops.reshape(gates * kept, (batch, k, tokens, 1)), x.dtype)
        outputs = ops.sum(back * weights, axis=1)
        load = ops.sum(choice * kept[..., None], axis=(0, 1))
        return outputs, load, ops.sum(valid) - ops.sum(kept), ops.sum(valid)

    def _expert_choice(self, x, probs, valid, capacity):
        """Each expert gathers its C top tokens; their outputs are summed back per token."""
        batch, tokens, dim = ops.shape(x)[0], x.shape[1], x.shape[2]
        # Padding tokens score below every real token, and get no weight if still taken.
        scores = ops.where(valid[:, :, None] > 0, probs, -1.0)
        gates, picked = ops.top_k(ops.transpose(scores, (2, 0, 1)), capacity)  # [E, B, C]
        row = ops.reshape(picked + ops.arange(batch)[None, :, None] * tokens, (-1,))
        flat = ops.reshape(x, (-1, dim))
        out = self._experts(ops.reshape(ops.take(flat, row, axis=0), (self.num_experts, -1, dim)))
        weights = ops.cast(ops.reshape(ops.maximum(gates, 0.0), (-1, 1)), x.dtype)
        outputs = ops.segment_sum(
            ops.reshape(out, (-1, dim)) * weights, row, num_segments=batch * tokens
        )
        real = ops.cast(gates > 0, "float32")  # [E, B, C]: slots holding a real token
        taken = ops.segment_sum(ops.reshape(real, (-1,)), row, num_segments=batch * tokens)
        taken = ops.minimum(ops.reshape(taken, (batch, tokens)), 1.0) * valid
        load = ops.sum(real, axis=(1, 2))
        outputs = ops.reshape(outputs, (batch, tokens, dim))
        return outputs, load, ops.sum(valid) - ops.sum(taken), ops.sum(valid)

    def _experts(self, buffers):
        """Every expert's MLP on its `[B·C, D]` rows of the `[E, B·C, D]` buffers.

        One plain matmul per expert, on its own weights. Measured in `benchmarks/moe.py`
        against one batched matmul over all experts (on stacked weights): at widths 256 and
        512 that ran 7% and 19% slower with XLA on CPU and 8% and 15% slower without, and
        4-5% faster at width 64, where the experts are a small part of the time.
        """
        outputs = []
        for rows, w_in, b_in, w_out, b_out in zip(
            ops.unstack(buffers),
            self.expert_in_kernels,
            self.expert_in_biases,
            self.expert_out_kernels,
            self.expert_out_biases,
        ):
            hidden = self.activation(ops.matmul(rows, w_in) + b_in)
            outputs.append(ops.matmul(hidden, w_out) + b_out)
        return ops.stack(outputs)

    def call(
        self, inputs, padding_mask=None, modality_ids=None, training=None, return_statistics=False
    ):
        batch_tokens = ops.shape(inputs)[:2]
        tokens = inputs.shape[1]
        if tokens is None:
            raise ValueError(
                "MoEFeedForward sizes its expert buffers from the sequence length, so it "
                f"needs a static one. Received: inputs with shape {tuple(inputs.shape)}"
            )
        valid = ops.ones(batch_tokens, "float32")
        if padding_mask is not None:
            valid = ops.cast(padding_mask, "float32")
        logits = self._router_logits(inputs, training)
        if self.router == "modality":
            if modality_ids is None:
                raise ValueError("The modality router needs `modality_ids`. Received: None")
            ids = ops.cast(modality_ids, "int32")
            if len(ids.shape) == 1:
                ids = ops.broadcast_to(ids[:, None], batch_tokens)
            group = ops.arange(self.num_experts) // self._eligible
            eligible = ops.equal(ids[:, :, None], group[None, None, :])
            logits = ops.where(eligible, logits, -1e9)
        probs = ops.softmax(logits, axis=-1)
        capacity = self.capacity(tokens, training)
        x = ops.cast(inputs, self.compute_dtype)
        route = self._expert_choice if self.router == "expert_choice" else self._token_choice
        outputs, load, dropped, assigned = route(x, probs, valid, capacity)

        count = ops.maximum(ops.sum(valid), 1.0)
        if training:
            self.add_loss(self._auxiliary_loss(logits, probs, valid, count))
        record = training and self.trainable and self.routing_statistics is not None
        if not (return_statistics or record):
            return outputs
        load = ops.cast(load, "float32")
        entropy = ops.sum(-ops.sum(probs * ops.log(ops.maximum(probs, 1e-9)), axis=-1) * valid)
        if record:
            self.routing_statistics.update_state(load, dropped, assigned, entropy, ops.sum(valid))
        if not return_statistics:
            return outputs
        return outputs, {
            "expert_load": load / ops.maximum(ops.sum(load), 1.0),
            "dropped_fraction": dropped / ops.maximum(assigned, 1.0),
            "router_entropy": entropy / count,
        }

    def _auxiliary_loss(self, logits, probs, valid, count):
        # Switch load balance: E · Σ_e f_e P_e, f_e = share of first choices, P_e = mean prob.
        first = ops.one_hot(ops.argmax(probs, axis=-1), self.num_experts) * valid[..., None]
        fraction = ops.sum(first, axis=(0, 1)) / count
        mean_prob = ops.sum(probs * valid[..., None], axis=(0, 1)) / count
        balance = self.num_experts * ops.sum(fraction * mean_prob)
        # z-loss: mean over tokens of logsumexp(logits)².
        z = ops.sum(ops.square(ops.logsumexp(logits, axis=-1)) * valid) / count
        return self.load_balance_weight * balance + self.z_loss_weight * z

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_experts": self.num_experts,
                "intermediate_dim": self.intermediate_dim,
                "router": self.router,
                "top_k": self.top_k,
                "capacity_factor": self.capacity_factor,
                "eval_capacity_factor": self.eval_capacity_factor,
                "router_jitter": self.router_jitter,
                "load_balance_weight": self.load_balance_weight,
                "z_loss_weight": self.z_loss_weight,
                "num_modalities": self.num_modalities,
                "activation": keras.activations.serialize(self.activation),
                "seed": self.seed,
                "track_statistics": self.track_statistics,
            }
        )
        return config
