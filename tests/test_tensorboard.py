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


def hparams_dashboard(logdir):
    """What TensorBoard's HParams dashboard shows for a log folder: per session, its hparams and its metrics."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    tb = base_plugin.TBContext(logdir=str(logdir), multiplexer=mux,
                               data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir)))
    backend = backend_context.Context(tb)
    experiment = get_experiment.Handler(context.RequestContext(), backend, "", api_pb2.GetExperimentRequest()).run()
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=10_000, allowed_statuses=[
        api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING])
    for h in experiment.hparam_infos:
        request.col_params.add(hparam=h.name)
    for m in experiment.metric_infos:
        request.col_params.add(metric=m.name)
    groups = list_session_groups.Handler(context.RequestContext(), backend, "", request).run().session_groups
    value = {"number_value": lambda v: v.number_value, "string_value": lambda v: v.string_value,
             "bool_value": lambda v: v.bool_value}
    return {g.sessions[0].name: ({k: value[v.WhichOneof("kind")](v) for k, v in g.hparams.items()},
                                 {m.name.tag: m.value for m in g.metric_values}) for g in groups}


def finished_trial(folder, trial_id, config, reports):
    from types import SimpleNamespace

    path = folder / f"trial_{trial_id}"
    path.mkdir(parents=True)
    (path / "result.json").write_text("".join(json.dumps(r) + "\n" for r in reports))
    return SimpleNamespace(trial_id=trial_id, path=str(path), local_path=str(path), config=config)


def test_each_net_of_a_population_or_alone_is_one_hparams_row_with_its_settings_and_final_metrics(tmp_path):
    """A population of three (one stopped early at epoch 1, one diverged in epoch 2) and a population of one: four
    rows, each with its member entry and the trial's named config keys, its metrics the last it reported."""
    from tune_mnist.tuning.tensorboard import MemberTensorboard

    callback = MemberTensorboard(tmp_path / "tensorboard" / "P100-grid", hparams=["P", "stage"])
    shared = {"P": 100, "stage": "grid", "epochs": 2, "optimizer": "adam"}
    three = [{"k": 2, "widths": "9-7", "lr": 0.01, "seed": 0}, {"k": 2, "widths": "8-8", "lr": 0.001, "seed": 1},
             {"k": 2, "widths": "7-9", "lr": 10.0, "seed": 2}]
    reports = [{"epoch": 1.0, "m0/epoch": 1, "m0/val_loss": 0.5, "m1/epoch": 1, "m1/val_loss": 0.9,
                "m1/stopped_early": 1, "m2/epoch": 1, "m2/val_loss": 0.7},
               {"epoch": 2.0, "m0/epoch": 2, "m0/val_loss": 0.4, "m0/test_acc": 0.9, "m1/epoch": 1, "m1/val_loss": 0.9,
                "m1/stopped_early": 1, "m2/epoch": 2, "m2/val_loss": float("nan"), "m2/error": "diverged in epoch 2"}]
    callback.on_trial_complete(0, [], finished_trial(tmp_path, "a", {**shared, "members": three}, reports))
    lone = [{"k": 0, "widths": [], "lr": 0.1, "seed": 0}]
    callback.on_trial_error(0, [], finished_trial(tmp_path, "b", {**shared, "members": lone},
                                                  [{"epoch": 1.0, "m0/epoch": 1, "m0/val_loss": 1.5}]))
    callback.on_experiment_end([])

    shown = hparams_dashboard(tmp_path / "tensorboard")
    assert sorted(shown) == ["P100-grid/trial_a/m0", "P100-grid/trial_a/m1", "P100-grid/trial_a/m2",
                             "P100-grid/trial_b/m0"]
    for name, entry in [("trial_a/m0", three[0]), ("trial_a/m1", three[1]), ("trial_b/m0", {**lone[0], "widths": ""})]:
        assert shown[f"P100-grid/{name}"][0] == {"P": 100, "stage": "grid", **entry}
    assert shown["P100-grid/trial_a/m0"][1] == {"val_loss": pytest.approx(0.4), "test_acc": pytest.approx(0.9),
                                                "epochs_trained": 2, "stopped_early": 0, "diverged": 0}
    assert shown["P100-grid/trial_a/m1"][1] == {"val_loss": pytest.approx(0.9), "epochs_trained": 1,
                                                "stopped_early": 1, "diverged": 0}
    assert shown["P100-grid/trial_a/m2"][1]["diverged"] == 1 and shown["P100-grid/trial_b/m0"][1]["epochs_trained"] == 1


def test_ray_writes_its_hparams_for_a_trial_without_members_only(tmp_path):
    """Ray's HParams entry of a population trial is its config (the members as one value): left out, and with it
    the HParams experiment summary that would hide the nets' own sessions from TensorBoard's dashboard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tune_mnist.tuning.tensorboard import TrialTensorboard

    class Trial:  # what Ray's logger reads of a trial
        def __init__(self, path, config):
            self.local_path, self.config, self.evaluated_params = str(path), config, config

        def init_local_path(self):
            pass

    logger = TrialTensorboard()
    for name, config in [("population", {"members": [{"seed": 0}], "P": 100}), ("search", {"weight_scale": 1.5})]:
        trial = Trial(tmp_path / name, config)
        logger.log_trial_result(1, trial, {"training_iteration": 1, "val_loss": 0.5, "m0/val_loss": 0.5})
        logger.log_trial_end(trial)
    population, search = (EventAccumulator(str(tmp_path / n)).Reload() for n in ("population", "search"))
    assert population.Tags()["scalars"] == search.Tags()["scalars"] == ["ray/tune/val_loss"]
    with pytest.raises(KeyError):
        population.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in search.PluginTagToContent("hparams")
