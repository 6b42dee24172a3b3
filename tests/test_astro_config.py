"""Configuration files: shipped in the package, overridable file by file, part of the keys."""

from __future__ import annotations

import pytest

from ar_tasks import astro_config
from ar_tasks.astro_config import CONFIG_FILES, ConfigError, config_file, configs_key


def test_every_shipped_file_is_found():
    for name in CONFIG_FILES:
        assert config_file(name).is_file(), name
    scamp = config_file("t120.scamp").read_text()
    assert "CHECKPLOT_DEV          NULL" in scamp  # Debian's PLplot has no PNG driver
    assert "DISTORT_DEGREES        1" in scamp
    assert "CHECKPLOT_DEV       NULL" in config_file("t120.psfex").read_text()


def test_user_folder_overrides_file_by_file(tmp_path, monkeypatch):
    (tmp_path / "t120.scamp").write_text("POSITION_MAXERR 10\n")
    assert config_file("t120.scamp", tmp_path) == (tmp_path / "t120.scamp").resolve()
    assert config_file("t120.sex", tmp_path) == config_file("t120.sex")  # not overridden
    monkeypatch.setenv(astro_config.CONFIG_ENV, str(tmp_path))
    assert config_file("t120.scamp") == (tmp_path / "t120.scamp").resolve()
    monkeypatch.setenv(astro_config.CONFIG_ENV, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="does not exist"):
        config_file("t120.scamp")
    with pytest.raises(ValueError, match="unknown configuration"):
        config_file("t120.swarp")


def test_editing_a_configuration_changes_the_key(tmp_path):
    names = ("t120.sex", "t120.scamp")
    shipped = configs_key(names)
    (tmp_path / "t120.scamp").write_text(config_file("t120.scamp").read_text())
    assert configs_key(names, tmp_path) == shipped
    (tmp_path / "t120.scamp").write_text("POSITION_MAXERR 10\n")
    assert configs_key(names, tmp_path) != shipped
