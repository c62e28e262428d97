import numpy as np
import pytest

from mm_keras.encoders import SharedEncoder, TransformerEncoder
from mm_keras.models import DualEncoder, evenly_spaced_layers, inherit_weights, shrink
from mm_keras.tokenizers import ImagePatchTokenizer, TextEmbedding

RNG = np.random.default_rng(0)
INPUTS = {
    "image": RNG.integers(0, 256, size=(3, 16, 16, 1)).astype("uint8"),
    "text": RNG.integers(1, 20, size=(3, 6)).astype("int32"),
}


def _teacher(shared=False, width=64, num_layers=4, encoder=None):
    def tower():
        return TransformerEncoder(num_layers, num_heads=4, intermediate_dim=2 * width)

    model = DualEncoder(
        {
            "image": ImagePatchTokenizer(image_size=16, patch_size=8, hidden_dim=width),
            "text": TextEmbedding(vocabulary_size=20, sequence_length=6, hidden_dim=width),
        },
        encoder or (tower() if shared else {"image": tower(), "text": tower()}),
        projection_dim=16,
    )
    model.build()
    rng = np.random.default_rng(1)
    for weight in model.weights:  # not just the initialization: zero biases would hide slips
        weight.assign(rng.normal(scale=0.2, size=weight.shape))
    return model


@pytest.mark.parametrize("shared", [False, True])
def test_a_student_that_keeps_everything_computes_what_the_teacher_does(shared):
    teacher = _teacher(shared)
    student = shrink(teacher, width_fraction=1.0, depth_fraction=1.0)
    assert student is not teacher
    expected, actual = teacher(INPUTS), student(INPUTS)
    for m in INPUTS:
        np.testing.assert_allclose(actual[m], expected[m], atol=1e-6)


def test_a_shared_mixture_of_experts_encoder_is_inherited_too():
    moe = {"num_experts": 4, "top_k": 2}
    teacher = _teacher(encoder=SharedEncoder(4, 4, 128, num_modalities=2, moe=moe))
    expected, actual = teacher(INPUTS), shrink(teacher, 1.0, 1.0)(INPUTS)
    for m in INPUTS:
        np.testing.assert_allclose(actual[m], expected[m], atol=1e-6)
    # Blocks 0 and 3 of 4 are kept: dense and sparse, as the student's blocks 0 and 1.
    student = shrink(teacher, width_fraction=0.5, depth_fraction=0.5)
    assert student.encoders.num_layers == 2 and student.encoders.is_sparse(1)
    assert student(INPUTS)["image"].shape == (3, 16)


def test_the_student_keeps_evenly_spaced_layers_and_the_first_heads_and_units():
    teacher = _teacher()
    student = shrink(teacher, width_fraction=0.5, depth_fraction=0.5)
    encoder, teacher_encoder = student.encoders["image"], teacher.encoders["image"]
    assert (encoder.num_layers, encoder.num_heads, encoder.intermediate_dim) == (2, 2, 64)
    assert student.tokenizers["text"].hidden_dim == 32 and student.projection_dim == 16
    for block, kept in zip(encoder.blocks, (0, 3)):  # evenly_spaced_layers(4, 2)
        source = teacher_encoder.blocks[kept]
        np.testing.assert_array_equal(
            block.attention.qkv_kernel, np.asarray(source.attention.qkv_kernel)[:32, :, :2]
        )  # the first 2 heads of 16 dims each, over the first 32 input units
        np.testing.assert_array_equal(
            block.mlp_in.kernel, np.asarray(source.mlp_in.kernel)[:32, :64]
        )
    np.testing.assert_array_equal(
        student.tokenizers["text"].token_embedding.embeddings,
        np.asarray(teacher.tokenizers["text"].token_embedding.embeddings)[:, :32],
    )
    assert float(student.logit_scale) == float(teacher.logit_scale)


def test_parameter_count_is_that_of_the_requested_size():
    teacher = _teacher()
    student = shrink(teacher, width_fraction=0.5)
    fresh = DualEncoder.from_config(student.get_config())
    fresh.build()
    assert student.count_params() == fresh.count_params()
    # Half the width: a quarter of every D x D matrix, half of every embedding.
    assert 0.25 < student.count_params() / teacher.count_params() < 0.5


def test_evenly_spaced_layers():
    assert evenly_spaced_layers(12, 4) == [0, 4, 7, 11]
    assert evenly_spaced_layers(4, 1) == [0]
    assert evenly_spaced_layers(3, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="num_kept=5, num_layers=4"):
        evenly_spaced_layers(4, 5)


def test_bad_requests_raise():
    teacher = _teacher()
    with pytest.raises(ValueError, match="keeps no head of 4"):
        shrink(teacher, width_fraction=0.1)
    with pytest.raises(ValueError, match="width_fraction=1.5"):
        shrink(teacher, width_fraction=1.5)
    bigger = _teacher(width=128)
    with pytest.raises(ValueError, match="fit inside its teacher weight. Received: .*128"):
        inherit_weights(teacher, bigger)
    with pytest.raises(ValueError, match="mirror the teacher's structure"):
        inherit_weights(teacher, _teacher(shared=True))
