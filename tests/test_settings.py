"""One source of defaults and one of constraints: each study's TOML holds its defaults, its flags and their help
come from it, its Settings declare each setting's type and range; the spaces ship inside the package."""

import dataclasses
import subprocess
import sys
import tomllib
import typing
import zipfile

import annotated_types
import pytest

from tune_mnist import cli, settings
from tune_mnist.errors import UserError
from tune_mnist.studies import MODULES, Study, registry
from tune_mnist.train import TrainConfig

STUDIES = registry()


def shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else repr(value) if value == "" else str(value)


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_help_shows_every_key_of_the_toml_with_its_value_and_comment(study, capsys):
    with pytest.raises(SystemExit):
        cli.main([study, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    space = settings.Space(STUDIES[study].settings, study)
    for path in (settings.builtin("common"), settings.builtin(study)):
        values = tomllib.loads(path.read_text())
        values.pop("gpu", None)
        values.pop("smoke", None)
        gpu = space.tables["gpu"]  # the study's [gpu] table over common's
        for key, value in values.items():
            flag = "--" + key.replace("_", "-")
            with_gpu = f"; with GPUs: {shown(gpu[key])}" if key in gpu else ""
            choices = settings.scalar(space.types[key])[1]
            one_of = f"; one of: {', '.join(choices)}" if choices else ""
            assert f"{flag} " in text, (study, flag)
            assert f"{space.help[key]} (default: {shown(space.values[key])}{with_gpu}{one_of})" in text, (study, key)
            if path.name == f"{study}.toml" or key not in tomllib.loads(settings.builtin(study).read_text()):
                assert space.values[key] == value, (study, key)


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_settings_are_the_tomls_then_the_flags(study):
    space = settings.Space(STUDIES[study].settings, study)
    plain = space.settings(cli.build_parser().parse_args([study]))
    assert all(getattr(plain, k) == v for k, v in space.values.items())
    smoke, gpu = space.settings(cli.build_parser().parse_args([study]), smoke=True, gpu=True), space.tables
    for key, value in {**gpu["gpu"], **gpu["smoke"]}.items():
        assert getattr(smoke, key) == value, (study, key)
    flagged = space.settings(cli.build_parser().parse_args([study, "--max-failures", "3"]), smoke=True, gpu=True)
    assert flagged.max_failures == 3


def test_a_space_file_replaces_keys_and_refuses_unknown_ones(tmp_path):
    (tmp_path / "mine.toml").write_text("epochs = 7\n[smoke]\nseeds = 3\n")
    space = settings.Space(STUDIES["budget"].settings, "budget", str(tmp_path / "mine.toml"))
    assert space.values["epochs"] == 7 and space.tables["smoke"]["seeds"] == 3
    (tmp_path / "bad.toml").write_text("epoch = 7\n")
    with pytest.raises(Exception, match="sets epoch, which budget does not take"):
        settings.Space(STUDIES["budget"].settings, "budget", str(tmp_path / "bad.toml"))


def test_a_wheel_holds_the_search_spaces(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path), str(settings.builtin("common").parents[1])], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("tune_mnist-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"tune_mnist/search_spaces/{s}.toml" for s in [*STUDIES, "common"]} <= set(names)


def numbers(kind):
    """(base type, its annotated_types constraints) of each number a field holds: itself, or its list's items."""
    metadata = []
    while typing.get_origin(kind) is typing.Annotated:
        kind, *more = typing.get_args(kind)
        metadata += more
    if typing.get_origin(kind) is list:
        return numbers(typing.get_args(kind)[0])
    return [(kind, metadata)] if kind in (int, float) else []


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_every_number_has_a_declared_range(study):
    """No setting is a bare int or float: each says at least where it starts (> 0, >= 0, ...)."""
    for name, kind in settings.types(STUDIES[study].settings).items():
        for base, metadata in numbers(kind):
            assert any(isinstance(m, (annotated_types.Gt, annotated_types.Ge)) for m in metadata), (study, name)


def test_the_study_records_are_what_cli_uses():
    for name, study in STUDIES.items():
        assert isinstance(study, Study) and study.name == name and name in MODULES
        assert issubclass(study.settings, settings.Common) and study.doc.strip()


def test_a_value_is_refused_with_its_origin(tmp_path):
    space_file = tmp_path / "mine.toml"
    space_file.write_text("confirm_seeds = -1\n[smoke]\nepochs = 0\n")
    space = settings.Space(STUDIES["budget"].settings, "budget", str(space_file))
    parse = cli.build_parser().parse_args
    with pytest.raises(UserError, match=rf"^confirm_seeds = -1 in {space_file}: must be > 0$"):
        space.settings(parse(["budget"]))
    with pytest.raises(UserError, match=r"^--confirm-seeds 0: must be > 0$"):
        space.settings(parse(["budget", "--confirm-seeds", "0"]))
    with pytest.raises(UserError, match=rf"^epochs = 0 in {space_file} \[smoke\]: must be > 0$"):
        space.settings(parse(["budget", "--confirm-seeds", "2"]), smoke=True)
    assert space.settings(parse(["budget", "--confirm-seeds", "2", "--epochs", "3"]), smoke=True).epochs == 3


def test_train_config_takes_its_fields_from_settings_by_name():
    s = settings.Space(STUDIES["transplant"].settings, "transplant").settings(
        cli.build_parser().parse_args(["transplant", "--optimizer", "adamw", "--batch-size", "64"]))
    cfg = TrainConfig.from_settings(s, eval_every=5)
    assert cfg == TrainConfig(epochs=s.epochs, batch_size=64, optimizer="adamw", inputs=s.inputs, eval_every=5)
    assert TrainConfig(**cfg.as_dict()) == cfg  # what a trial rebuilds from config["train"]
    assert {f.name for f in dataclasses.fields(TrainConfig)} - set(settings.types(type(s))) == {"momentum",
                                                                                               "eval_every"}
