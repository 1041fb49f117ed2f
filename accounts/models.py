"""API tokens: several per user, named, revocable, stored only as a hash and shown once."""

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

PREFIX_LEN = 8


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="api_tokens")
    name = models.CharField(max_length=100, default="default")
    prefix = models.CharField(max_length=PREFIX_LEN, help_text="The first characters, to tell "
                              "tokens apart.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"{self.user} / {self.name} ({self.prefix}…)"

    @classmethod
    def issue(cls, user, name: str = "default") -> tuple["ApiToken", str]:
        """Create a token and return it with its key, which is never stored."""
        key = secrets.token_urlsafe(32)
        token = cls.objects.create(user=user, name=name, prefix=key[:PREFIX_LEN],
                                   key_hash=hash_key(key))
        return token, key


class Role(models.TextChoices):
    VIEWER = "viewer"  # sees the team's jobs
    MEMBER = "member"  # and submits, cancels and retries them
    ADMIN = "admin"  # and manages the team's schedules


ACTING_ROLES = (Role.MEMBER, Role.ADMIN)


class Team(models.Model):
    """Who may see whose jobs, and how much of the cluster they may hold at once."""

    name = models.SlugField(max_length=50, unique=True)
    title = models.CharField(max_length=200, blank=True)
    max_running_jobs = models.PositiveIntegerField(
        null=True, blank=True, help_text="Jobs queued or running at once; empty: no limit.")
    max_cpus = models.PositiveIntegerField(
        null=True, blank=True, help_text="CPU slots held at once; empty: no limit.")
    max_gpus = models.PositiveIntegerField(
        null=True, blank=True, help_text="GPUs held at once; empty: no limit.")
    share = models.PositiveIntegerField(
        default=1, help_text="Fair-share weight: a team with twice the share gets twice the "
        "free slots when teams compete.")
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership",
                                     related_name="teams")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Membership(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        ordering = ["team", "user"]
        constraints = [models.UniqueConstraint(fields=["team", "user"], name="membership_once")]
        indexes = [models.Index(fields=["user", "team"], name="membership_user_team")]

    def __str__(self):
        return f"{self.user} in {self.team} ({self.role})"


class Invitation(models.Model):
    """A team's offer of a role to a user: they become a member only when they accept it."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="invitations")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="invitations")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL,
                                   null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "pk"]
        constraints = [models.UniqueConstraint(fields=["team", "user"], name="invitation_once")]

    def __str__(self):
        return f"{self.user} invited to {self.team} ({self.role})"
