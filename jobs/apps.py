from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"

    def ready(self):
        from accounts import teams
        from jobs import selectors

        teams.provide_job_load(selectors.team_load)
