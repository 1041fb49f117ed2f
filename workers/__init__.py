"""Everything that runs on a worker node; importable without the portal's database."""
