"""programs.command: the name when the PATH finds this very program, else its absolute path."""

from __future__ import annotations

import os

from intunnel.programs import command


def _script(folder, name="intunnel"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


def test_the_name_when_the_path_finds_this_program(tmp_path):
    ours = _script(tmp_path / "venv" / "bin")
    assert command("intunnel", which=lambda _: ours, scripts_dir=str(tmp_path / "venv" / "bin")) == "intunnel"


def test_the_absolute_path_when_the_path_finds_nothing_or_another(tmp_path):
    ours = _script(tmp_path / "venv" / "bin")
    other = _script(tmp_path / "usr" / "bin")
    scripts = str(tmp_path / "venv" / "bin")
    assert command("intunnel", which=lambda _: None, scripts_dir=scripts) == ours
    assert command("intunnel", which=lambda _: other, scripts_dir=scripts) == ours
    assert os.path.isabs(command("intunnel", which=lambda _: "/no/such/file", scripts_dir=scripts))


def test_the_name_when_this_installation_has_no_such_script(tmp_path):
    assert command("intunnel", which=lambda _: None, scripts_dir=str(tmp_path)) == "intunnel"
