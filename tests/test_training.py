import numpy as np
import pytest
import torch

from mm_classifier import MMClassifierError, MultiModalClassifier, MultiModalConfig
from mm_classifier.training import TrainState, frozen_embeds, loss_weights, resume, tune_and_score


def test_train_state_keeps_the_best_epoch_by_validation_map_and_counts_bad_epochs():
    state, model = TrainState(), torch.nn.Linear(2, 1)
    for epoch, score in enumerate([0.5, 0.7, 0.6, 0.65]):
        with torch.no_grad():
            model.weight.fill_(epoch)
        state.end_epoch({"epoch": epoch + 1, "validation_mAP": score}, model)
    assert (state.best_epoch, state.best_score, state.bad_epochs, state.epoch) == (2, 0.7, 2, 4)
    assert torch.equal(state.best_state["weight"], torch.ones(1, 2))  # a copy from the best epoch
    assert len(state.history) == 4
    restored = TrainState()
    restored.load_state_dict(state.state_dict())
    assert restored == state
    state.reset()
    assert state == TrainState()


def test_resume_without_checkpoint_is_a_no_op_and_a_wrong_folder_is_refused(tmp_path):
    assert resume(None, tmp_path, None) is None
    assert resume(None, tmp_path, "latest") is None  # no checkpoints of this stage yet
    with pytest.raises(MMClassifierError, match="is not a folder"):
        resume(None, tmp_path, str(tmp_path / "step_9"))


def test_frozen_embeds_batch_the_rows_and_leave_the_encoder_in_its_mode():
    encoder = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Dropout(0.9)).train()
    rows = torch.randn(10, 3)
    embeds = frozen_embeds(encoder, encoder, [rows], "cpu", batch_size=4)
    torch.testing.assert_close(embeds, encoder[0](rows))  # no dropout: inference mode
    assert encoder.training


def test_tune_and_score_sets_the_thresholds_it_scores_with():
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 3)) < 0.3).astype(np.int8)
    probs = np.clip(labels * 0.6 + rng.random((200, 3)) * 0.5, 0.01, 0.99)
    logits = np.log(probs / (1 - probs))
    Model = MultiModalClassifier(MultiModalConfig(modality="text", id2label={0: "dog", 1: "beach", 2: "man"}))

    results = tune_and_score(Model, (logits, labels), (logits, labels), np.arange(200) // 5, ["dog", "beach", "man"])
    assert Model.config.thresholds != [0.5, 0.5, 0.5]
    assert results["validation_micro_f1"] == results["test_micro_f1"] > 0.9  # the same predictions, tuned thresholds
    assert set(results["threshold_shrinkage_cv_micro_f1"]) == {"0", "10", "30", "100", "300", "1000", "inf"}
    best = max(results["threshold_shrinkage_cv_micro_f1"].values())
    chosen = results["threshold_shrinkage"]
    assert results["threshold_shrinkage_cv_micro_f1"]["inf" if chosen == "shared" else str(int(chosen))] == best
    with pytest.raises(RuntimeError, match="validation predictions"):
        tune_and_score(Model, (logits, labels), (logits, labels), np.arange(10), ["dog", "beach", "man"])


def test_class_weights_come_from_the_training_labels_and_a_class_without_examples_keeps_one():
    multi = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]], dtype=torch.float)
    with pytest.warns(UserWarning, match="no training example has man; it keeps the weight 1"):
        assert loss_weights(multi, ["dog", "beach", "man"], single_label=False) == [1.0, 3.0, 1.0]
    single = torch.eye(3)[[0, 0, 0, 1, 1, 2]]
    balanced = [2 / 3, 1.0, 2.0]  # N / (classes x examples)
    assert loss_weights(single, ["dog", "beach", "man"], single_label=True) == pytest.approx(balanced, abs=1e-4)
