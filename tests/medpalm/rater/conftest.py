"""One synthetic study created per test session; each test serves a private copy of it."""

import pathlib

import pytest

from tests.support import rater


@pytest.fixture(scope="session")
def study_template(tmp_path_factory):
  """(path of the created study database, {rater or "admin": token})."""
  root = tmp_path_factory.mktemp("rater_template")
  _, tokens = rater.create(root)
  return pathlib.Path(root / "study.db"), tokens


@pytest.fixture
def study(study_template, tmp_path):
  """(database URL of a private copy, tokens, root folder)."""
  template, tokens = study_template
  return rater.copy_study(template, tmp_path / "copy"), tokens, tmp_path


@pytest.fixture
def study_files(study_template):
  """The folder holding the template study's cases file and images."""
  return study_template[0].parent
