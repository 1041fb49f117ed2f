"""Fault campaigns over the real processes: `python -m chaos.redis_loss` (Redis killed under a
busy worker) and `python -m chaos.campaign` (`make chaos`: every kind of fault on a whole
cluster on PostgreSQL)."""
