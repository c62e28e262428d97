import numpy as np
import pytest

from mm_keras.layers import ModalityAwareBlock, TransformerBlock
from tests.roundtrip import check_layer_roundtrip


def _inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 32)).astype("float32")
    mask = np.array([[True] * 8, [True] * 5 + [False] * 3])
    return x, mask


@pytest.mark.parametrize(
    "kwargs",
    [
        {"modality_norms": True},
        {"moe": {"num_experts": 4, "top_k": 2}},
        {"modality_norms": True, "moe": {"num_experts": 4, "router": "modality"}},
    ],
    ids=["norms", "token_moe", "modality_moe"],
)
def test_roundtrip(kwargs):
    x, mask = _inputs()
    check_layer_roundtrip(
        ModalityAwareBlock,
        {"num_heads": 4, "intermediate_dim": 64, "num_modalities": 2, **kwargs},
        x,
        call_kwargs={"padding_mask": mask, "modality_ids": np.array([0, 1])},
        expected_output_shape=(2, 8, 32),
    )


def test_dense_block_with_shared_norms_is_the_transformer_block():
    x, mask = _inputs()
    block, reference = ModalityAwareBlock(4, 64), TransformerBlock(4, 64)
    block.build(x.shape)
    reference.build(x.shape)
    for name in ("attention_norm", "attention", "mlp_norm", "mlp_in", "mlp_out"):
        getattr(block, name).set_weights(getattr(reference, name).get_weights())
    np.testing.assert_allclose(
        block(x, padding_mask=mask), reference(x, padding_mask=mask), atol=1e-6
    )


def test_modality_norms_give_each_modality_its_own_affine():
    x, mask = _inputs()
    block = ModalityAwareBlock(4, 64, num_modalities=2, modality_norms=True)
    block.build(x.shape)
    same = np.asarray(block(x, padding_mask=mask, modality_ids=np.array([0, 0])))
    gamma = np.asarray(block.norm_gamma)
    gamma[1] *= 3.0  # modality 1's norms only
    block.norm_gamma.assign(gamma)
    changed = np.asarray(block(x, padding_mask=mask, modality_ids=np.array([0, 1])))
    np.testing.assert_allclose(changed[0], same[0], atol=1e-6)
    assert np.abs(changed[1] - same[1]).max() > 1e-2


def test_moe_block_reports_statistics_and_adds_its_losses():
    x, mask = _inputs()
    block = ModalityAwareBlock(4, 64, moe={"num_experts": 4})
    out, statistics = block(x, padding_mask=mask, training=True, return_statistics=True)
    assert out.shape == x.shape and statistics["expert_load"].shape == (4,)
    assert len(block.losses) == 1


def test_missing_modality_ids_raise():
    x, mask = _inputs()
    with pytest.raises(ValueError, match="needs `modality_ids`"):
        ModalityAwareBlock(4, 64, num_modalities=2, modality_norms=True)(x)
    with pytest.raises(ValueError, match="needs `num_modalities`"):
        ModalityAwareBlock(4, 64, modality_norms=True)
