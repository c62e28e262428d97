import numpy as np
import pytest

from mm_keras.encoders import SharedEncoder, TransformerEncoder, upcycle
from tests.roundtrip import check_layer_roundtrip


def _sequence(batch=2, tokens=8, width=32):
    rng = np.random.default_rng(0)
    mask = np.ones((batch, tokens), bool)
    mask[-1, tokens // 2 :] = False
    return {
        "tokens": rng.normal(size=(batch, tokens, width)).astype("float32"),
        "mask": mask,
        "modality_ids": np.arange(batch) % 2,
    }


def test_roundtrip():
    check_layer_roundtrip(
        SharedEncoder,
        {
            "num_layers": 2,
            "num_heads": 4,
            "intermediate_dim": 64,
            "num_modalities": 2,
            "moe": {"num_experts": 4, "top_k": 2},
            "modality_norms": True,
        },
        _sequence(),
        expected_output_shape={"tokens": (2, 8, 32), "mask": (2, 8)},
    )


def test_every_moe_every_th_block_is_sparse():
    encoder = SharedEncoder(4, 4, 64, 2, moe={"num_experts": 4}, moe_every=2)
    assert [encoder.is_sparse(i) for i in range(4)] == [False, True, False, True]
    outputs, statistics = encoder(_sequence(), training=True, return_statistics=True)
    assert sorted(statistics) == ["block_1", "block_3"] and len(encoder.losses) == 2
    assert not any(SharedEncoder(2, 4, 64, 2).is_sparse(i) for i in range(2))


@pytest.mark.parametrize("modality_norms", [False, True])
def test_upcycled_top2_encoder_computes_what_the_dense_one_did(modality_norms):
    dense = TransformerEncoder(2, 4, 64)
    sequence = _sequence()
    expected = np.asarray(dense(sequence)["tokens"])
    sparse = upcycle(
        dense,
        num_modalities=2,
        moe={"num_experts": 4, "top_k": 2, "capacity_factor": 2.0},
        modality_norms=modality_norms,
    )
    real = sequence["mask"]  # padded positions' outputs carry no meaning
    np.testing.assert_allclose(
        np.asarray(sparse(sequence)["tokens"])[real], expected[real], atol=1e-5
    )


def test_upcycling_noise_makes_experts_differ():
    dense = TransformerEncoder(2, 4, 64)
    dense(_sequence())
    sparse = upcycle(dense, 2, {"num_experts": 4}, noise_std=0.05, seed=0)
    kernels = np.stack([np.asarray(k) for k in sparse.blocks[1].feed_forward.expert_in_kernels])
    dense_kernel = np.asarray(dense.blocks[1].mlp_in.kernel)
    assert not np.allclose(kernels[0], kernels[1])
    noise = kernels - dense_kernel[None]
    np.testing.assert_allclose(noise.std(), 0.05 * dense_kernel.std(), rtol=0.05)
    assert abs(noise.mean()) < 0.1 * noise.std()


def test_upcycling_an_unbuilt_encoder_raises():
    with pytest.raises(ValueError, match="built"):
        upcycle(TransformerEncoder(1, 2, 8), 2, {"num_experts": 2})
