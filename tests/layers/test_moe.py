import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from mm_keras.layers import MoEFeedForward
from tests.roundtrip import check_layer_roundtrip
from tests.scripts import run_script

E, D, H, N = 4, 16, 32, 8


def _inputs(seed=0, batch=3, tokens=N):
    return np.random.default_rng(seed).normal(size=(batch, tokens, D)).astype("float32")


def _layer(**kwargs):
    layer = MoEFeedForward(E, H, activation="relu", **kwargs)
    layer.build((None, N, D))
    # A router with decided preferences, so ties and near-ties do not blur the references.
    rng = np.random.default_rng(42)
    layer.router_kernel.assign(rng.normal(size=(D, E)).astype("float32"))
    for weight in (*layer.expert_in_biases, *layer.expert_out_biases):
        weight.assign(rng.normal(size=weight.shape).astype("float32") * 0.1)
    return layer


def _numpy(layer):
    return {w.name: np.asarray(w) for w in layer.weights}


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def _expert(w, e, x):
    """Expert e's MLP on tokens x [..., D] (ReLU)."""
    hidden = np.maximum(x @ w[f"expert_{e}_in_kernel"] + w[f"expert_{e}_in_bias"], 0.0)
    return hidden @ w[f"expert_{e}_out_kernel"] + w[f"expert_{e}_out_bias"]


def _token_choice_reference(layer, x, capacity, allowed=None):
    """Top-k routing by a plain loop: first choices first, token order, capacity C."""
    w, k = _numpy(layer), layer.top_k
    logits = x @ w["router_kernel"]
    if allowed is not None:
        logits = np.where(allowed, logits, -1e9)
    probs = _softmax(logits)
    out, dropped = np.zeros_like(x), 0
    for b in range(x.shape[0]):
        order = np.argsort(-probs[b], axis=-1, kind="stable")[:, :k]
        gates = np.take_along_axis(probs[b], order, axis=-1)
        if k > 1:
            gates = gates / gates.sum(-1, keepdims=True)
        load = np.zeros(E, int)
        for rank in range(k):
            for n in range(x.shape[1]):
                e = order[n, rank]
                if load[e] < capacity:
                    load[e] += 1
                    out[b, n] += gates[n, rank] * _expert(w, e, x[b, n])
                else:
                    dropped += 1
    return out, dropped / (x.shape[0] * x.shape[1] * k)


@pytest.mark.parametrize("top_k", [1, 2])
def test_with_ample_capacity_equals_a_dense_top_k_mixture(top_k):
    layer = _layer(top_k=top_k, capacity_factor=E / top_k)
    x = _inputs()
    assert layer.capacity(N) == N
    out, stats = layer(x, return_statistics=True)
    expected, dropped = _token_choice_reference(layer, x, capacity=N)
    assert dropped == 0 and float(stats["dropped_fraction"]) == 0.0
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("top_k", [1, 2])
def test_small_capacity_drops_what_a_loop_drops(top_k):
    layer = _layer(top_k=top_k, capacity_factor=0.5)
    x = _inputs(1)
    capacity = layer.capacity(N)
    assert capacity == math.ceil(0.5 * top_k * N / E)
    out, stats = layer(x, return_statistics=True)
    expected, dropped = _token_choice_reference(layer, x, capacity)
    assert dropped > 0
    np.testing.assert_allclose(float(stats["dropped_fraction"]), dropped, rtol=1e-6)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_expert_choice_takes_each_experts_top_tokens():
    layer = _layer(router="expert_choice", capacity_factor=1.0)
    x = _inputs(2)
    capacity = layer.capacity(N)
    w = _numpy(layer)
    probs = _softmax(x @ w["router_kernel"])
    expected, taken = np.zeros_like(x), np.zeros(x.shape[:2], bool)
    for b in range(x.shape[0]):
        for e in range(E):
            for n in np.argsort(-probs[b, :, e], kind="stable")[:capacity]:
                expected[b, n] += probs[b, n, e] * _expert(w, e, x[b, n])
                taken[b, n] = True
    out, stats = layer(x, return_statistics=True)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(stats["dropped_fraction"]), 1 - taken.mean(), rtol=1e-6)
    np.testing.assert_allclose(stats["expert_load"], np.full(E, 1 / E), rtol=1e-6)


@pytest.mark.parametrize("per_token", [False, True])
def test_modality_routing_uses_the_modalitys_experts(per_token):
    layer = _layer(router="modality", num_modalities=2, top_k=1, capacity_factor=2.0)
    x = _inputs(3, batch=2)
    ids = np.array([0, 1])
    allowed = (np.arange(E)[None, None, :] // 2) == ids[:, None, None]
    if per_token:
        ids = np.array([[0, 1] * (N // 2), [1, 0] * (N // 2)])
        allowed = (np.arange(E)[None, None, :] // 2) == ids[:, :, None]
    out = layer(x, modality_ids=ids)
    # Two experts per modality, capacity 2 * N / 2 = N: nothing is dropped.
    expected, dropped = _token_choice_reference(layer, x, layer.capacity(N), allowed)
    assert dropped == 0
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_one_expert_per_modality_is_that_experts_mlp():
    layer = MoEFeedForward(2, H, router="modality", num_modalities=2, activation="relu")
    x = _inputs(4, batch=2)
    out = np.asarray(layer(x, modality_ids=np.array([1, 0])))
    w = _numpy(layer)
    np.testing.assert_allclose(out[0], _expert(w, 1, x[0]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1], _expert(w, 0, x[1]), rtol=1e-5, atol=1e-5)


def test_auxiliary_losses_match_the_formulas():
    layer = _layer(top_k=2, load_balance_weight=0.3, z_loss_weight=0.07)
    x = _inputs(5)
    mask = np.ones(x.shape[:2], bool)
    mask[1, 5:] = False
    layer(x, padding_mask=mask, training=True)
    logits = x @ _numpy(layer)["router_kernel"]
    probs = _softmax(logits)[mask]  # real tokens only
    f = np.bincount(probs.argmax(-1), minlength=E) / len(probs)
    balance = E * np.sum(f * probs.mean(0))
    lse = np.log(np.exp(logits[mask]).sum(-1))
    z = np.mean(lse**2)
    (loss,) = layer.losses
    np.testing.assert_allclose(float(loss), 0.3 * balance + 0.07 * z, rtol=1e-5)


def test_auxiliary_loss_gradient_matches_finite_differences():
    layer = _layer(load_balance_weight=1.0, z_loss_weight=1.0)
    x = tf.constant(_inputs(6))
    with tf.GradientTape() as tape:
        layer(x, training=True)
        loss = layer.losses[0]
    gradient = np.asarray(tape.gradient(loss, layer.router_kernel))
    # Only P_e and the z-loss carry a gradient (f_e counts argmax choices): check both by
    # central differences on one router entry.
    kernel = np.asarray(layer.router_kernel)
    for i, j in ((0, 0), (3, 2)):
        values = []
        for step in (1e-2, -1e-2):
            shifted = kernel.copy()
            shifted[i, j] += step
            layer.router_kernel.assign(shifted)
            layer(x, training=True)
            values.append(float(layer.losses[0]))
        layer.router_kernel.assign(kernel)
        np.testing.assert_allclose(gradient[i, j], (values[0] - values[1]) / 2e-2, rtol=2e-2)


@pytest.mark.parametrize(
    "kwargs",
    [{"top_k": 1}, {"top_k": 2, "capacity_factor": 0.5}, {"router": "expert_choice"}],
    ids=["top1", "top2_dropping", "expert_choice"],
)
def test_gradients_through_the_index_dispatch_match_finite_differences(kwargs):
    # Routing is piecewise constant: small steps move gates and experts, not choices.
    # The experts in float64 (the router stays float32), so a step can be small.
    layer = _layer(dtype="float64", **kwargs)
    x = tf.constant(_inputs(10), "float64")
    weights = np.random.default_rng(11).normal(size=x.shape)
    with tf.GradientTape() as tape:
        tape.watch(x)
        objective = tf.reduce_sum(layer(x) * weights)
    kernels = [layer.expert_in_kernels[0], layer.expert_in_kernels[-1]]
    grad_x, *grad_kernels = tape.gradient(objective, [x, *kernels])

    def objective_at(inputs):
        return float(np.sum(np.asarray(layer(inputs)) * weights))

    step = 1e-4
    for b, n, d in ((0, 1, 2), (2, 5, 7)):
        shifted = [np.array(x) for _ in range(2)]
        shifted[0][b, n, d] += step
        shifted[1][b, n, d] -= step
        numeric = (objective_at(shifted[0]) - objective_at(shifted[1])) / (2 * step)
        np.testing.assert_allclose(float(grad_x[b, n, d]), numeric, rtol=1e-3, atol=1e-4)
    for variable, grad_kernel, index in zip(kernels, grad_kernels, ((3, 4), (1, 9))):
        kernel = np.asarray(variable)
        values = []
        for sign in (1, -1):
            shifted = kernel.copy()
            shifted[index] += sign * step
            variable.assign(shifted)
            values.append(objective_at(x))
        variable.assign(kernel)
        numeric = (values[0] - values[1]) / (2 * step)
        np.testing.assert_allclose(float(grad_kernel[index]), numeric, rtol=1e-4, atol=1e-6)


def test_experts_start_different_at_the_stacked_glorot_scale():
    layer = MoEFeedForward(E, H)
    layer.build((None, N, D))
    # Glorot uniform over all E experts' fans: limit sqrt(6 / (E·(D + H))).
    limit = np.sqrt(6.0 / (E * (D + H)))
    for weights in (layer.expert_in_kernels, layer.expert_out_kernels):
        kernels = np.stack([np.asarray(k) for k in weights])
        assert not np.allclose(kernels[0], kernels[1])
        assert np.abs(kernels).max() <= limit
        np.testing.assert_allclose(kernels.std(), limit / np.sqrt(3.0), rtol=0.1)


def test_routing_statistics_are_token_weighted_and_recorded_only_when_training():
    layer = _layer(top_k=2, capacity_factor=0.5)
    x = [_inputs(12), _inputs(13)]
    masks = [np.ones(x[0].shape[:2], bool), np.arange(N)[None, :] < np.array([[8], [3], [1]])]
    layer(x[0])  # inference records nothing
    assert float(layer.routing_statistics.tokens) == 0
    calls = [
        layer(a, padding_mask=m, training=True, return_statistics=True)[1] for a, m in zip(x, masks)
    ]
    # Pooled over both calls by their tokens, from each call's own ratios.
    tokens = np.array([m.sum() for m in masks], float)
    dropped = np.array([float(c["dropped_fraction"]) for c in calls])
    kept = 2 * tokens * (1 - dropped)
    entropy = np.array([float(c["router_entropy"]) for c in calls])
    expected = {
        "dropped_fraction": np.sum(dropped * 2 * tokens) / np.sum(2 * tokens),
        "router_entropy": np.sum(entropy * tokens) / tokens.sum(),
    }
    load = np.sum([np.asarray(c["expert_load"]) * k for c, k in zip(calls, kept)], 0) / kept.sum()
    results, prefix = layer.routing_statistics.result(), layer.routing_statistics.name
    for name, value in expected.items():
        np.testing.assert_allclose(float(results[f"{prefix}/{name}"]), value, rtol=1e-5)
    recorded = [float(results[f"{prefix}/expert_{e}_load"]) for e in range(E)]
    np.testing.assert_allclose(recorded, load, rtol=1e-5)
    frozen = _layer()
    frozen.trainable = False
    frozen(x[0], training=True)
    assert float(frozen.routing_statistics.tokens) == 0
    assert MoEFeedForward(E, H, track_statistics=False).get_config()["track_statistics"] is False


def test_a_plain_keras_model_keeps_its_metrics_and_evaluate_result():
    inputs = keras.Input((N, D))
    model = keras.Model(inputs, inputs + MoEFeedForward(E, H)(inputs))
    model.compile(optimizer="adam", loss="mse")
    x = _inputs(14, batch=8)
    history = model.fit(x, x, epochs=1, verbose=0, validation_data=(x, x))
    assert set(history.history) == {"loss", "val_loss"}
    assert isinstance(model.evaluate(x, x, verbose=0), float)


def test_padding_is_routed_nowhere():
    layer = _layer(capacity_factor=1.0)
    x = _inputs(7, batch=1)
    mask = np.array([[True] * 5 + [False] * 3])
    out, stats = layer(x, padding_mask=mask, return_statistics=True)
    np.testing.assert_array_equal(np.asarray(out)[0, 5:], 0.0)
    # Padding neither takes capacity nor changes the real tokens' outputs.
    changed = x.copy()
    changed[0, 5:] *= 100
    np.testing.assert_allclose(layer(changed, padding_mask=mask)[0, :5], out[0, :5], atol=1e-5)
    assert 0.99 < float(np.sum(stats["expert_load"])) < 1.01


@pytest.mark.parametrize(
    "kwargs, call_kwargs",
    [
        ({"top_k": 2}, {}),
        ({"router": "expert_choice"}, {}),
        ({"router": "modality", "num_modalities": 2}, {"modality_ids": np.array([0, 1])}),
    ],
)
def test_roundtrip(kwargs, call_kwargs):
    x = np.random.default_rng(0).normal(size=(2, 16, 32)).astype("float32")
    check_layer_roundtrip(
        MoEFeedForward,
        {"num_experts": 4, "intermediate_dim": 32, "router_jitter": 0.1, **kwargs},
        x,
        call_kwargs=call_kwargs,
        expected_output_shape=(2, 16, 32),
    )


def test_router_stays_float32_under_mixed_precision():
    layer = MoEFeedForward(E, H, dtype="mixed_bfloat16")
    out = layer(_inputs(8), training=True)
    assert out.dtype == "bfloat16" and layer.router_kernel.dtype == "float32"
    assert np.isfinite(float(layer.losses[0]))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="router='hash'"):
        MoEFeedForward(4, 8, router="hash")
    with pytest.raises(ValueError, match="top_k=5"):
        MoEFeedForward(4, 8, top_k=5)
    with pytest.raises(ValueError, match="num_experts=3, num_modalities=2"):
        MoEFeedForward(3, 8, router="modality", num_modalities=2)
    with pytest.raises(ValueError, match="capacity_factor=0"):
        MoEFeedForward(4, 8, capacity_factor=0)
    with pytest.raises(ValueError, match="needs `modality_ids`"):
        MoEFeedForward(4, 8, router="modality", num_modalities=2)(_inputs())
    assert keras.activations.serialize(MoEFeedForward(4, 8).activation) == "gelu"
    layer = MoEFeedForward(4, 8)
    unknown_length = tf.function(layer, input_signature=[tf.TensorSpec([None, None, D])])
    with pytest.raises(ValueError, match=r"static one. Received: .*\(None, None, 16\)"):
        unknown_length.get_concrete_function()


@pytest.mark.parametrize(
    "kwargs",
    [{"top_k": 2}, {"router": "expert_choice"}, {"router": "modality", "num_modalities": 2}],
    ids=["token", "expert", "modality"],
)
def test_converts_to_builtin_tflite_and_matches_keras(kwargs, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from mm_keras.export import tflite_ops

    layer = _layer(**kwargs)
    x = _inputs(9, batch=2)
    ids = np.array([1, 0], "int32")
    mask = np.ones((2, N), bool)
    mask[1, 6:] = False

    def serve(tokens, padding_mask, modality_ids):
        if layer.router != "modality":
            modality_ids = None
        return {"outputs": layer(tokens, padding_mask=padding_mask, modality_ids=modality_ids)}

    archive = keras.export.ExportArchive()
    archive.track(layer)
    archive.add_endpoint(
        "serve",
        serve,
        input_signature=[
            tf.TensorSpec([2, N, D], tf.float32, name="tokens"),
            tf.TensorSpec([2, N], tf.bool, name="padding_mask"),
            tf.TensorSpec([2], tf.int32, name="modality_ids"),
        ],
    )
    archive.write_out(str(tmp_path), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path), ["serve"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    tflite_model = converter.convert()
    assert not [op for op in tflite_ops(tflite_model) if op.startswith("Flex")]

    runner = Interpreter(model_content=tflite_model, num_threads=1).get_signature_runner()
    actual = runner(tokens=x, padding_mask=mask, modality_ids=ids)["outputs"]
    expected = serve(x, mask, ids)["outputs"]
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


def test_trains_under_mirrored_strategy_on_two_devices():
    result = run_script("tests/layers/moe_mirrored.py", timeout=180)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["replicas"] == 2
    assert all(np.isfinite(figures["loss"])) and figures["loss"][-1] < figures["loss"][0]
    assert figures["auxiliary_loss"] > 0 and figures["min_weight_change"] > 0
