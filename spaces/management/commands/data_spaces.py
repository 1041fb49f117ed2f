"""Move an install from one shared data space into team spaces: everything under DATA_ROOT
(but teams/ and shared/) into one team's folder, the demo data into the shared area, and the
warehouse tables of a schema (public by default) into that team's schema, owned by its role."""

from __future__ import annotations

import shutil

from django.core.management.base import BaseCommand, CommandError
from psycopg import sql

from accounts.models import Team
from workers import data

DEMO_FOLDER = "nycflights13"


class Command(BaseCommand):
    help = ("Migrate a single-space install: move the files under DATA_ROOT into "
            "DATA_ROOT/teams/<team>/ (nycflights13/ into the shared area) and the warehouse's "
            "tables of --schema into the team's schema.")

    def add_arguments(self, parser):
        parser.add_argument("--into", required=True, metavar="TEAM",
                            help="the team that gets what is there now")
        parser.add_argument("--schema", action="append", default=None,
                            help="warehouse schema whose tables move (default: public; "
                            "repeat for more)")
        parser.add_argument("--dry-run", action="store_true", help="say what would move")

    def handle(self, *args, into: str, schema=None, dry_run=False, **options):
        if not Team.objects.filter(name=into).exists():
            if dry_run:
                self.stdout.write(f"team {into} does not exist yet: it would be made")
            else:
                Team.objects.create(name=into, title=f"{into} (moved from the shared space)")
                self.stdout.write(f"made team {into}: add its members in the admin")
        self.dry_run = dry_run
        moved = self.move_files(into)
        tables = self.move_tables(into, schema or ["public"]) if data.warehouse_url() else 0
        verb = "would move" if dry_run else "moved"
        self.stdout.write(f"{verb} {moved} files or folders and {tables} tables into team "
                          f"{into}'s space")

    def move_files(self, team: str) -> int:
        root = data.data_root()
        if not root.is_dir():
            return 0
        target = data.team_root(team)
        moved = 0
        for entry in sorted(root.iterdir()):
            if entry.name in (data.TEAMS_FOLDER, data.SHARED_FOLDER):
                continue
            where = (data.shared_root() if entry.name == DEMO_FOLDER else target) / entry.name
            if where.exists():
                raise CommandError(f"{where} exists already: move {entry} by hand")
            self.stdout.write(f"{entry.relative_to(root)} -> {where.relative_to(root)}")
            moved += 1
            if not self.dry_run:
                where.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(entry), str(where))
        return moved

    def move_tables(self, team: str, schemas: list[str]) -> int:
        moved = 0
        with data.connect_warehouse() as conn:
            data.ensure_team(conn, team)
            rows = conn.execute(
                "SELECT schemaname, tablename FROM pg_tables WHERE schemaname = ANY(%s) "
                "ORDER BY 1, 2", (schemas,)).fetchall()
            for schema, table in rows:
                if table.startswith(data.RESERVED_TABLE_PREFIX):
                    continue
                self.stdout.write(f"table {schema}.{table} -> {data.schema_name(team)}.{table}")
                moved += 1
                if self.dry_run:
                    continue
                conn.execute(sql.SQL("ALTER TABLE {}.{} SET SCHEMA {}").format(
                    sql.Identifier(schema), sql.Identifier(table),
                    sql.Identifier(data.schema_name(team))))
                conn.execute(sql.SQL("ALTER TABLE {}.{} OWNER TO {}").format(
                    sql.Identifier(data.schema_name(team)), sql.Identifier(table),
                    sql.Identifier(data.role_name(team))))
            if self.dry_run:
                conn.rollback()
        return moved
