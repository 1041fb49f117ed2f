"""Create the demo login for a local cluster, once, and print it."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create a demo admin login the first time, and print it."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", default="demo-password")

    def handle(self, *args, username, password, **options):
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            User.objects.create_superuser(username=username, password=password, email="")
        elif not user.check_password(password):
            # Left as it is: setting it again would end everyone's sessions on every start.
            self.stdout.write(f"login: {username} (its password was changed; kept)")
            return
        self.stdout.write(f"login: {username} / {password}")
