"""One enabled rule of each kind, telling nobody yet: add addresses or a webhook in the admin."""

from django.db import migrations

DEFAULTS = [
    ("Node offline", "node_offline", 0),
    ("Job failed", "job_failed", 60),
    ("Queue wait over 10 min", "queue_wait", 10),
    ("Job not finished after 60 min", "job_deadline", 60),
]


def add_defaults(apps, schema_editor):
    AlertRule = apps.get_model("alerts", "AlertRule")
    for name, kind, minutes in DEFAULTS:
        if not AlertRule.objects.filter(kind=kind).exists():
            AlertRule.objects.create(name=name, kind=kind, threshold_minutes=minutes)


def remove_defaults(apps, schema_editor):
    AlertRule = apps.get_model("alerts", "AlertRule")
    for name, kind, _ in DEFAULTS:
        AlertRule.objects.filter(name=name, kind=kind).delete()


class Migration(migrations.Migration):

    dependencies = [
        ("alerts", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(add_defaults, remove_defaults),
    ]
