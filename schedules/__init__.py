"""Cron schedules: a team's job, submitted again and again on a cron expression (UTC)."""
