# Nodes are the nodes app's now (its 0001 takes the models over, tables and rows as they are):
# forgotten here, in Django's state only. Nothing in the database changes.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0009_gangs'),
        ('nodes', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.RemoveField(
                    model_name='nodesample',
                    name='node',
                ),
                migrations.DeleteModel(
                    name='NodeMinute',
                ),
                migrations.DeleteModel(
                    name='Node',
                ),
                migrations.DeleteModel(
                    name='NodeSample',
                ),
            ],
        ),
    ]
