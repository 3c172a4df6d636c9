"""Projects get a public code for their URLs (issue 17); crawls record what started them (issue 14)."""

from django.db import migrations, models

import dashboard.models


def give_codes(apps, schema_editor):
    Project = apps.get_model("dashboard", "Project")
    taken = set()
    for project in Project.objects.filter(code__isnull=True).only("pk"):
        code = dashboard.models.new_code()
        while code in taken or Project.objects.filter(code=code).exists():
            code = dashboard.models.new_code()
        taken.add(code)
        Project.objects.filter(pk=project.pk).update(code=code)


class Migration(migrations.Migration):

    dependencies = [
        ("dashboard", "0005_lifecycle_status_bounds_and_stalls"),
    ]

    operations = [
        migrations.AddField(
            model_name="project",
            name="code",
            field=models.CharField(max_length=32, null=True, editable=False),
        ),
        migrations.RunPython(give_codes, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="project",
            name="code",
            field=models.CharField(default=dashboard.models.new_code, editable=False,
                                   help_text="Public code used in URLs and the API, like a crawl's.",
                                   max_length=32, unique=True),
        ),
        migrations.AddField(
            model_name="crawl",
            name="trigger",
            field=models.CharField(choices=[("user", "User"), ("api", "API"), ("schedule", "Schedule"),
                                            ("scrapyd", "Scrapyd API")],
                                   default="user",
                                   help_text="What started the crawl: the web UI, the API, a schedule or the Scrapyd API.",
                                   max_length=16),
        ),
    ]
