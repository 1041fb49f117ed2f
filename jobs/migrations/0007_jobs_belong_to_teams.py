"""Every job belongs to a team: the jobs of each owner so far go to a team of their own."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models
from django.utils.text import slugify


def give_jobs_teams(apps, schema_editor):
    Job = apps.get_model("jobs", "Job")
    Team = apps.get_model("accounts", "Team")
    Membership = apps.get_model("accounts", "Membership")
    User = apps.get_model(settings.AUTH_USER_MODEL)
    for owner_id in Job.objects.filter(team__isnull=True).values_list(
            "owner_id", flat=True).distinct():
        user = User.objects.get(pk=owner_id)
        membership = Membership.objects.filter(user_id=owner_id).order_by("team__name").first()
        if membership:
            team_id = membership.team_id
        else:
            base = slugify(user.username)[:40] or f"user-{owner_id}"
            name, n = base, 1
            while Team.objects.filter(name=name).exists():
                n += 1
                name = f"{base}-{n}"
            team = Team.objects.create(name=name, title=f"{user.username}'s own work")
            Membership.objects.create(team=team, user_id=owner_id, role="admin")
            team_id = team.pk
        Job.objects.filter(owner_id=owner_id, team__isnull=True).update(team_id=team_id)
    Job.objects.filter(state="pending", after__isnull=False).update(blocked=True)
    if schema_editor.connection.vendor == "postgresql":
        # The rows just written leave deferred foreign-key checks pending, and PostgreSQL
        # alters no table with checks pending: run them now.
        schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        schema_editor.execute("SET CONSTRAINTS ALL DEFERRED")


class Migration(migrations.Migration):

    dependencies = [
        ("jobs", "0006_teams_quotas_labels"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RunPython(give_jobs_teams, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="job",
            name="team",
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT,
                                    related_name="jobs", to="accounts.team"),
        ),
    ]
