"""The ETL kinds' own work (etl.ingest, etl.sql), as plain functions the kinds in
workers/kinds/etl.py put together: column types and their strict parsing (`types`), reading and
splitting CSV, JSON-lines and Parquet files (`files`), writing partitions idempotently to Parquet
or the warehouse with a quarantine side file (`output`), and SQL over files with DuckDB (`sql`).
"""
