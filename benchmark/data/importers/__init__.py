"""Importers: turn public dataset releases into the harness's dataset folder format.

Each importer writes ``<root>`` through :func:`benchmark.data.dataset.write_dataset` (RecBole
atomic files + ``images/`` + ``manifest.json``) and records where the data came from, and what
was dropped or missing, in the manifest's ``source``.
"""

from .amazon import import_amazon_raw
from .atomic_folder import import_atomic_folder, import_ml100k
from .movielens import import_movielens_csv
from .sequences import import_sequence_file

__all__ = ["import_amazon_raw", "import_atomic_folder", "import_ml100k",
           "import_movielens_csv", "import_sequence_file"]
