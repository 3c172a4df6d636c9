"""Schedules (issue 14): recurring launches of a project, their fire records, and the crawl's schedule."""

import dashboard.models
import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('dashboard', '0006_project_code_crawl_trigger'),
    ]

    operations = [
        migrations.CreateModel(
            name='Schedule',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('code', models.CharField(default=dashboard.models.new_code, editable=False, help_text='Public code used in URLs and the API.', max_length=32, unique=True)),
                ('cron', models.CharField(help_text='Five cron fields, or @hourly, @daily, @weekly, @monthly.', max_length=100)),
                ('timezone', models.CharField(default='UTC', help_text='IANA time zone the cron is read in.', max_length=64)),
                ('workers', models.PositiveSmallIntegerField(blank=True, help_text="Workers per run; empty = the definition's.", null=True)),
                ('overlap', models.CharField(choices=[('skip', 'Skip the fire'), ('queue', 'Start when the previous run ends'), ('parallel', 'Run in parallel')], default='skip', max_length=16)),
                ('catch_up', models.CharField(choices=[('once', 'One run for all missed fires'), ('skip', 'Skip missed fires')], default='once', max_length=16)),
                ('max_runtime', models.PositiveIntegerField(blank=True, help_text='Seconds after which a run is stopped; empty = no limit.', null=True)),
                ('enabled', models.BooleanField(default=True)),
                ('next_due', models.DateTimeField(db_index=True, help_text="The next fire not processed yet (UTC): the step's cursor.")),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('updated_at', models.DateTimeField(auto_now=True)),
                ('project', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='schedules', to='dashboard.project')),
            ],
            options={
                'ordering': ['created_at', 'id'],
            },
        ),
        migrations.AddField(
            model_name='crawl',
            name='schedule',
            field=models.ForeignKey(blank=True, help_text="The schedule that started it (trigger 'schedule').", null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='crawls', to='dashboard.schedule'),
        ),
        migrations.CreateModel(
            name='ScheduleFire',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('due', models.DateTimeField(help_text='When the cron said to fire (UTC).')),
                ('fired_at', models.DateTimeField(help_text='When the conductor processed it (launch, skip or queue).')),
                ('outcome', models.CharField(choices=[('launched', 'Launched'), ('skipped', 'Skipped'), ('queued', 'Queued')], db_index=True, max_length=16)),
                ('reason', models.TextField(blank=True, help_text='Why it was skipped or queued, for people.')),
                ('crawl', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='fires', to='dashboard.crawl')),
                ('schedule', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='fires', to='dashboard.schedule')),
            ],
            options={
                'ordering': ['-due', '-id'],
                'constraints': [models.UniqueConstraint(fields=('schedule', 'due'), name='unique_fire_per_schedule_due')],
            },
        ),
    ]
