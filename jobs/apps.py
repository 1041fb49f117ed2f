from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"

    def ready(self):
        from accounts import teams
        from jobs import selectors
        from jobs.broadcast import Outbox
        from nodes import selectors as node_selectors
        from nodes import services as node_services

        teams.provide_job_load(selectors.team_load)
        node_selectors.provide_attempts_on(selectors.node_attempts)
        node_selectors.provide_jobs_on(selectors.node_jobs)
        node_services.provide_outbox(Outbox)
