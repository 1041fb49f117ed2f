# Nodes move from the jobs app into an app of their own. Their tables keep their names
# (jobs_node, jobs_nodesample, jobs_nodeminute) and their rows: this migration only tells Django
# that the models are now this app's (jobs 0010 forgets them there), and moves their content
# types, so that permissions given on nodes and the admin's history of them stay.

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models

MODELS = ("node", "nodesample", "nodeminute")


def move_content_types(apps, schema_editor, source, target):
    ContentType = apps.get_model("contenttypes", "ContentType")
    types = ContentType.objects.using(schema_editor.connection.alias)
    for model in MODELS:
        if not types.filter(app_label=target, model=model).exists():
            types.filter(app_label=source, model=model).update(app_label=target)


def forwards(apps, schema_editor):
    move_content_types(apps, schema_editor, "jobs", "nodes")


def backwards(apps, schema_editor):
    move_content_types(apps, schema_editor, "nodes", "jobs")


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('contenttypes', '0002_remove_content_type_name'),
        ('jobs', '0009_gangs'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name='Node',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.CharField(max_length=100, unique=True)),
                        ('state', models.CharField(choices=[('online', 'Online'), ('draining', 'Draining'), ('offline', 'Offline')], default='online', max_length=16)),
                        ('worker', models.CharField(blank=True, max_length=200)),
                        ('queues', models.JSONField(blank=True, default=list)),
                        ('labels', models.JSONField(blank=True, default=dict, help_text='What it offers to jobs that ask for labels, from its NODE_LABELS.')),
                        ('concurrency', models.PositiveIntegerField(default=0)),
                        ('running', models.PositiveIntegerField(default=0)),
                        ('utilization', models.JSONField(blank=True, default=dict)),
                        ('reserved', models.JSONField(blank=True, default=list)),
                        ('first_seen', models.DateTimeField(default=django.utils.timezone.now)),
                        ('last_heartbeat', models.DateTimeField(blank=True, null=True)),
                    ],
                    options={
                        'db_table': 'jobs_node',
                        'ordering': ['name'],
                    },
                ),
                migrations.CreateModel(
                    name='NodeMinute',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('minute', models.DateTimeField()),
                        ('cpu', models.FloatField()),
                        ('cpu_max', models.FloatField()),
                        ('mem', models.FloatField()),
                        ('gpu', models.FloatField(blank=True, null=True)),
                        ('samples', models.PositiveIntegerField()),
                        ('node', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='minutes', to='nodes.node')),
                    ],
                    options={
                        'db_table': 'jobs_nodeminute',
                        'indexes': [models.Index(fields=['minute'], name='nodeminute_minute')],
                        'constraints': [models.UniqueConstraint(fields=('node', 'minute'), name='nodeminute_once')],
                    },
                ),
                migrations.CreateModel(
                    name='NodeSample',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('ts', models.DateTimeField()),
                        ('cpu', models.FloatField()),
                        ('mem', models.FloatField()),
                        ('gpu', models.FloatField(blank=True, help_text='Mean GPU utilization, if any.', null=True)),
                        ('data', models.JSONField(blank=True, default=dict)),
                        ('node', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='samples', to='nodes.node')),
                    ],
                    options={
                        'db_table': 'jobs_nodesample',
                        'indexes': [models.Index(fields=['node', 'ts'], name='nodesample_node_ts'), models.Index(fields=['ts'], name='nodesample_ts')],
                    },
                ),
            ],
        ),
        migrations.RunPython(forwards, backwards),
    ]
