"""rankstudy: LoRA rank studies (LoRA grids, DyLoRA, MatryoshkaLoRA) scored by AURAC and cost.

Sub-packages, each importing only those before it: core (declarations, no torch), storage,
adapters, tasks, model, trial, tracking, study, commands.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# Where the classes Tune pickles into a study's tuner.pkl lived before the sub-packages: a study
# saved then still resumes (unpickling imports these names). Nothing else uses them.
MOVED_FOR_TUNE = {
    "rankstudy.arm_scheduler": "rankstudy.study.arm_scheduler",
    "rankstudy.atomic_fs": "rankstudy.storage.atomic_fs",
    "rankstudy.search": "rankstudy.study.search",
    "rankstudy.study_tuner": "rankstudy.study.tuner",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as the module it moved to (the same module object)."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED_FOR_TUNE else None

    def create_module(self, spec):
        return importlib.import_module(MOVED_FOR_TUNE[spec.name])

    def exec_module(self, module):
        pass


sys.meta_path.append(_MovedModules())
