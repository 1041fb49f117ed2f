"""Static files: plotly.min.js from the installed plotly package (no copy in the repository,
no CDN), and the storage that names files by their hash once they are collected."""

import os
from pathlib import Path

import plotly
from django.contrib.staticfiles.finders import BaseFinder
from django.core.files.storage import FileSystemStorage
from whitenoise.compress import Compressor
from whitenoise.storage import CompressedManifestStaticFilesStorage

PLOTLY_DIR = Path(plotly.__file__).parent / "package_data"
PLOTLY_JS = "plotly.min.js"
PREFIX = "vendor"


class PlotlyFinder(BaseFinder):
    """Finds `vendor/plotly.min.js` (and nothing else of the package's data)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.storage = FileSystemStorage(location=PLOTLY_DIR)
        self.storage.prefix = PREFIX

    def check(self, **kwargs):
        return []

    def find(self, path, find_all=False, **kwargs):
        if path != f"{PREFIX}/{PLOTLY_JS}":
            return []
        found = str(PLOTLY_DIR / PLOTLY_JS)
        return [found] if find_all else found

    def list(self, ignore_patterns):
        yield PLOTLY_JS, self.storage


class _CompressOnce(Compressor):
    """A hashed name's content never changes: its compressed copy, once written, is kept, so
    that a collectstatic at every start compresses only what changed."""

    def compress(self, path):
        done = [path + suffix for suffix in (".br", ".gz") if os.path.exists(path + suffix)]
        return done or super().compress(path)


class HashedStorage(CompressedManifestStaticFilesStorage):
    """Hashed, compressed names from collectstatic's manifest; a file it does not list (none
    collected yet, or added since) keeps its plain name, served from its folder."""

    manifest_strict = False

    def create_compressor(self, **kwargs):
        return _CompressOnce(**kwargs)

    def stored_name(self, name):
        if not self.hashed_files:
            return name
        try:
            return super().stored_name(name)
        except ValueError:
            return name
