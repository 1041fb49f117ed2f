"""Read access one team gives another to part of its data space: a path prefix in its folder
or a table in its warehouse schema. Everything else of a team's stays its own."""

from django.conf import settings
from django.db import models
from django.utils import timezone


class GrantKind(models.TextChoices):
    PATH = "path"  # a folder or file of the team's space, and everything below it
    TABLE = "table"  # a table of the team's warehouse schema


class DataGrant(models.Model):
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE,
                             related_name="data_grants_given",
                             help_text="The team whose data it is.")
    grantee = models.ForeignKey("accounts.Team", on_delete=models.CASCADE,
                                related_name="data_grants_held",
                                help_text="The team that may read it.")
    kind = models.CharField(max_length=5, choices=GrantKind.choices)
    target = models.CharField(
        max_length=500, help_text="A path prefix in the team's space (e.g. sales/2024) or a "
        "table name of its schema (e.g. flights).")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["team", "grantee", "kind", "target"]
        constraints = [
            models.UniqueConstraint(fields=["team", "grantee", "kind", "target"],
                                    name="data_grant_once"),
            models.CheckConstraint(condition=~models.Q(team=models.F("grantee")),
                                   name="data_grant_to_another_team"),
        ]

    def __str__(self):
        return f"{self.grantee} may read {self.team}'s {self.kind} {self.target}"
