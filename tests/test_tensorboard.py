"""Member TensorBoard runs, from a trial's result.json."""

import json

import pytest


def test_member_tensorboard_writes_each_run_once_and_skips_metrics_missing_at_an_epoch(tmp_path):
    """final_train_* is reported at the last epoch only; a population that starts again (a retried trial)
    reports from epoch 1 again, and its runs hold its last report of each epoch only."""
    import pickle
    from types import SimpleNamespace

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tune_mnist.tuning.tensorboard import MemberTensorboard

    callback = pickle.loads(pickle.dumps(MemberTensorboard(tmp_path / "tb")))  # the Tuner pickles it
    trial = SimpleNamespace(trial_id="0", path=str(tmp_path / "trial_0"), local_path=str(tmp_path / "trial_0"),
                            config={"members": [{"seed": 0}, {"seed": 1}]})
    lines = []
    for epoch, loss in [(1, 0.9), (2, 0.8), (1, 0.7), (2, 0.5)]:  # failed after epoch 2, then retried
        result = {"population": 2, "epoch": float(epoch), "m0/epoch": epoch, "m0/val_loss": loss}
        lines.append({**result, "m0/final_train_loss": 0.4} if loss == 0.5 else result)
    (tmp_path / "trial_0").mkdir()
    (tmp_path / "trial_0" / "result.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    callback.on_trial_complete(0, [], trial)
    callback.on_experiment_end([])
    acc = EventAccumulator(str(tmp_path / "tb" / "trial_0" / "m0")).Reload()
    assert [(e.step, e.value) for e in acc.Scalars("final_train_loss")] == [(2, pytest.approx(0.4))]
    assert [(e.step, e.value) for e in acc.Scalars("val_loss")] == [(1, pytest.approx(0.7)), (2, pytest.approx(0.5))]
