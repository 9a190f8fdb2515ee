"""One source of defaults: each study's TOML holds them, its flags and their help come from it, and the spaces
ship inside the package."""

import subprocess
import sys
import tomllib
import zipfile

import pytest

from tune_mnist import cli, settings
from tune_mnist.studies import registry

STUDIES = registry()


def shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else repr(value) if value == "" else str(value)


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_help_shows_every_key_of_the_toml_with_its_value_and_comment(study, capsys):
    with pytest.raises(SystemExit):
        cli.main([study, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    space = settings.Space(STUDIES[study].Settings, study)
    for path in (settings.builtin("common"), settings.builtin(study)):
        values = tomllib.loads(path.read_text())
        values.pop("gpu", None)
        values.pop("smoke", None)
        gpu = space.tables["gpu"]  # the study's [gpu] table over common's
        for key, value in values.items():
            flag = "--" + key.replace("_", "-")
            with_gpu = f"; with GPUs: {shown(gpu[key])}" if key in gpu else ""
            assert f"{flag} " in text, (study, flag)
            assert f"{space.help[key]} (default: {shown(space.values[key])}{with_gpu})" in text, (study, key)
            if path.name == f"{study}.toml" or key not in tomllib.loads(settings.builtin(study).read_text()):
                assert space.values[key] == value, (study, key)


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_settings_are_the_tomls_then_the_flags(study):
    space = settings.Space(STUDIES[study].Settings, study)
    plain = space.settings(cli.build_parser().parse_args([study]))
    assert all(getattr(plain, k) == v for k, v in space.values.items())
    smoke, gpu = space.settings(cli.build_parser().parse_args([study]), smoke=True, gpu=True), space.tables
    for key, value in {**gpu["gpu"], **gpu["smoke"]}.items():
        assert getattr(smoke, key) == value, (study, key)
    flagged = space.settings(cli.build_parser().parse_args([study, "--max-failures", "3"]), smoke=True, gpu=True)
    assert flagged.max_failures == 3


def test_a_space_file_replaces_keys_and_refuses_unknown_ones(tmp_path):
    (tmp_path / "mine.toml").write_text("epochs = 7\n[smoke]\nseeds = 3\n")
    space = settings.Space(STUDIES["budget"].Settings, "budget", str(tmp_path / "mine.toml"))
    assert space.values["epochs"] == 7 and space.tables["smoke"]["seeds"] == 3
    (tmp_path / "bad.toml").write_text("epoch = 7\n")
    with pytest.raises(Exception, match="sets epoch, which budget does not take"):
        settings.Space(STUDIES["budget"].Settings, "budget", str(tmp_path / "bad.toml"))


def test_a_wheel_holds_the_search_spaces(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path), str(settings.builtin("common").parents[1])], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("tune_mnist-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"tune_mnist/search_spaces/{s}.toml" for s in [*STUDIES, "common"]} <= set(names)
