"""The README names everything a user can pick: every registered mixer, block pattern and
architecture, every optimizer group and every public op (in backticks)."""
import os
import re

import pytest

from layers import axes, ops
from seqmodels import ARCHITECTURES, registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "README.md")) as f:
  README = f.read()

NAMES = sorted({*registry.MIXERS, *registry.PATTERNS, *ARCHITECTURES, *axes.GROUPS,
                *ops.__all__})


@pytest.mark.parametrize("name", NAMES)
def test_the_readme_names_it(name):
  assert re.search(rf"`{re.escape(name)}[`(]", README), f"README.md does not name `{name}`"


def test_the_readme_documents_the_command_and_mixer_options():
  assert "seqmodels-train --config" in README
  assert "--config.model.mixer_kwargs.MIXER.OPTION=VALUE" in README
