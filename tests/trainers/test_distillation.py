import keras
import numpy as np
import pytest
import tensorflow as tf

from mm_keras.losses import affinity_mimicking_loss, clip_loss, relation_kd_loss
from mm_keras.models import DualEncoder, shrink
from mm_keras.trainers import DistillationTrainer, cache_teacher_embeddings
from tests.trainers.toy import toy_batches, toy_trainer


def _teacher():
    trainer = toy_trainer()
    trainer.fit(toy_batches(), epochs=3, verbose=0)
    return trainer.model


def _compiled(trainer):
    trainer.build()
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    return trainer


def test_loss_is_the_weighted_sum_of_its_terms():
    teacher = _teacher()
    student = shrink(teacher, width_fraction=0.5)
    trainer = _compiled(
        DistillationTrainer(
            student, teacher, label_aware=True, hard_weight=0.5, affinity_weight=2.0,
            relation_weight=3.0,
        )
    )  # fmt: skip
    batch = next(iter(toy_batches(n=16)))
    logs = trainer.evaluate(batch, return_dict=True, verbose=0)
    inputs = {m: batch[m] for m in ("image", "text")}
    s, t = student(inputs), teacher(inputs)
    hard = float(clip_loss(s["image"], s["text"], student.logit_scale, labels=batch["label"]))
    affinity = float(
        affinity_mimicking_loss(
            s["image"], s["text"], t["image"], t["text"], student.logit_scale, teacher.logit_scale
        )
    )
    relation = 0.5 * sum(float(relation_kd_loss(s[m], t[m])) for m in inputs)
    np.testing.assert_allclose(logs["contrastive_loss"], hard, rtol=1e-5)
    np.testing.assert_allclose(
        logs["distillation_loss"], 2.0 * affinity + 3.0 * relation, rtol=1e-5
    )
    np.testing.assert_allclose(
        logs["loss"], 0.5 * hard + 2.0 * affinity + 3.0 * relation, rtol=1e-5
    )


def test_fit_trains_the_student_and_leaves_the_teacher_alone():
    teacher = _teacher()
    frozen = [np.array(w) for w in teacher.weights]
    student = shrink(teacher, width_fraction=0.5)
    trainer = _compiled(DistillationTrainer(student, teacher, label_aware=True))
    before = trainer.evaluate(toy_batches(), return_dict=True, verbose=0)["distillation_loss"]
    trainer.fit(toy_batches(), epochs=5, verbose=0)
    after = trainer.evaluate(toy_batches(), return_dict=True, verbose=0)["distillation_loss"]
    assert after < before
    for weight, old in zip(teacher.weights, frozen):
        np.testing.assert_array_equal(weight, old)


def test_a_momentum_teacher_is_a_moving_average_of_the_student():
    student = toy_trainer().model
    trainer = _compiled(DistillationTrainer(student, momentum=0.9, label_aware=True))
    teacher = trainer.teacher
    for t, s in zip(teacher.weights, student.weights):  # it starts as the student
        np.testing.assert_array_equal(t, s)
    old_teacher = [np.array(w) for w in teacher.weights]
    trainer.fit(toy_batches(n=16), epochs=1, verbose=0)  # one step
    for t, s, old in zip(teacher.weights, student.weights, old_teacher):
        np.testing.assert_allclose(t, 0.9 * old + 0.1 * np.asarray(s), atol=1e-6)
    assert not teacher.trainable


def test_feature_distillation_learns_a_projection_to_a_wider_teacher():
    teacher = _teacher()  # 16-dimensional embeddings
    config = shrink(teacher, width_fraction=0.5).get_config()
    student = DualEncoder.from_config({**config, "projection_dim": 8})
    trainer = _compiled(
        DistillationTrainer(student, teacher, feature_weight=1.0, affinity_weight=0.0)
    )
    projection = trainer.feature_projections["image"]
    assert projection.kernel.shape == (8, 16)
    before = np.array(projection.kernel)
    trainer.fit(toy_batches(), epochs=1, verbose=0)
    assert not np.array_equal(np.array(projection.kernel), before)


def test_config_round_trips():
    teacher = _teacher()
    trainer = DistillationTrainer(
        shrink(teacher, width_fraction=0.5), teacher, feature_weight=1.0, feature_kind="mse"
    )
    clone = DistillationTrainer.from_config(trainer.get_config())
    assert isinstance(clone.teacher, DualEncoder)
    assert (clone.feature_weight, clone.feature_kind) == (1.0, "mse")


def _examples():
    # Of known size: on a dataset of unknown size, Keras logs an epoch's mean loss
    # as if it had taken one more step.
    return toy_batches(n=48).unbatch().apply(tf.data.experimental.assert_cardinality(48))


def _shuffled(examples):
    return examples.shuffle(48, seed=1).batch(16)


def test_cached_teacher_embeddings_stay_with_their_examples():
    teacher = _teacher()
    cached = cache_teacher_embeddings(teacher, _examples(), batch_size=20)
    for batch in _shuffled(cached).take(2):
        expected = teacher({m: batch[m] for m in ("image", "text")})
        for m in ("image", "text"):
            np.testing.assert_allclose(batch["teacher"][m], expected[m], atol=1e-6)


def test_an_epoch_from_cached_embeddings_equals_one_running_the_teacher(monkeypatch):
    teacher = _teacher()
    student = shrink(teacher, width_fraction=0.5)
    initial = [np.array(w) for w in student.weights]
    cached = _shuffled(cache_teacher_embeddings(teacher, _examples()))
    results = []
    for data in (_shuffled(_examples()), cached):
        for weight, value in zip(student.weights, initial):
            weight.assign(value)
        trainer = _compiled(
            DistillationTrainer(student, teacher, label_aware=True, relation_weight=1.0)
        )
        if data is cached:  # the teacher must not run at all
            monkeypatch.setattr(teacher, "call", None)
        loss = trainer.fit(data, epochs=1, verbose=0).history["loss"][0]
        results.append((loss, [np.array(w) for w in student.weights]))
    (loss, weights), (cached_loss, cached_weights) = results
    np.testing.assert_allclose(cached_loss, loss, rtol=1e-5)
    for weight, cached_weight in zip(weights, cached_weights):
        np.testing.assert_allclose(cached_weight, weight, atol=1e-5)
    assert not np.allclose(weights[0], initial[0])


def test_cached_embeddings_are_refused_where_they_do_not_fit():
    teacher = _teacher()
    with pytest.raises(ValueError, match="Expected unbatched examples"):
        cache_teacher_embeddings(teacher, toy_batches())
    with pytest.raises(ValueError, match="infinite cardinality"):
        cache_teacher_embeddings(teacher, _examples().repeat())
    with pytest.raises(ValueError, match="at least one example"):
        cache_teacher_embeddings(teacher, _examples().take(0))
    with pytest.raises(ValueError, match="no 'teacher' field"):
        cache_teacher_embeddings(teacher, _examples().map(lambda e: {**e, "teacher": 0}))
    cached = _shuffled(cache_teacher_embeddings(teacher, _examples()))
    trainer = _compiled(DistillationTrainer(toy_trainer().model, momentum=0.9))
    with pytest.raises(ValueError, match="a momentum teacher changes at every step"):
        trainer.fit(cached, epochs=1, verbose=0)


def test_bad_arguments_raise():
    student = toy_trainer().model
    with pytest.raises(ValueError, match="either a `teacher` or a `momentum`"):
        DistillationTrainer(student)
    with pytest.raises(ValueError, match="momentum=1.5"):
        DistillationTrainer(student, momentum=1.5)
    with pytest.raises(ValueError, match="not all 0. Received"):
        DistillationTrainer(student, student, hard_weight=0.0, affinity_weight=0.0)
    with pytest.raises(ValueError, match="feature_kind='l1'"):
        DistillationTrainer(student, student, feature_kind="l1")
