"""Print a new API token for a user: `manage.py api_token USERNAME [--create] [--name N]`."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from accounts.models import ApiToken


class Command(BaseCommand):
    help = "Print a new API token for USERNAME (the key is shown only this once)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--create", action="store_true", help="create the user first")
        parser.add_argument("--name", default="default", help="a name for the token")

    def handle(self, *args, username, create, name, **options):
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            if not create:
                raise CommandError(f"no user {username!r} (use --create to make one)")
            user = User.objects.create_user(username=username)
        _, key = ApiToken.issue(user, name=name)
        self.stdout.write(key)
