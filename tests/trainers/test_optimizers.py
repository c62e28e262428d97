import numpy as np

from mm_keras.trainers import adamw
from tests.models.test_dual_encoder import _inputs, _model


def test_only_weight_matrices_are_decayed():
    model = _model()
    model(_inputs())
    before = {v.path: np.array(v) for v in model.trainable_variables}
    optimizer = adamw(0.1, weight_decay=0.5)
    optimizer.apply(
        [np.zeros(v.shape, "float32") for v in model.trainable_variables], model.trainable_variables
    )
    changed = {
        v.path for v in model.trainable_variables if not np.array_equal(np.array(v), before[v.path])
    }
    assert any(p.endswith("kernel") for p in changed)
    for path in before:
        if any(
            name in path.rsplit("/", 1)[-1]
            for name in ("gamma", "beta", "bias", "embedding", "logit")
        ):
            assert path not in changed, path
    assert any("log_logit_scale" in p for p in before) and any(
        "position_embedding" in p for p in before
    )
