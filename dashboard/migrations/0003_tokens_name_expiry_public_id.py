"""API tokens get a public id, a name and an optional expiry (issue 11)."""

from django.db import migrations, models

import dashboard.models


def fill_public_ids(apps, schema_editor):
    ApiToken = apps.get_model("dashboard", "ApiToken")
    for token in ApiToken.objects.filter(public_id__isnull=True).only("pk"):
        token.public_id = dashboard.models.new_token_id()
        token.save(update_fields=["public_id"])


class Migration(migrations.Migration):

    dependencies = [
        ("dashboard", "0002_item_crawl_id_index"),
    ]

    operations = [
        migrations.AddField(
            model_name="apitoken",
            name="name",
            field=models.CharField(default="API token", help_text="What the token is for, e.g. the script using it.",
                                   max_length=100),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="apitoken",
            name="expires_at",
            field=models.DateTimeField(blank=True, help_text="Refused from then on; empty = never.", null=True),
        ),
        # Existing rows each need their own id: add it empty, fill it, then make it unique.
        migrations.AddField(
            model_name="apitoken",
            name="public_id",
            field=models.CharField(editable=False, max_length=20, null=True),
        ),
        migrations.RunPython(fill_public_ids, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="apitoken",
            name="public_id",
            field=models.CharField(default=dashboard.models.new_token_id, editable=False,
                                   help_text="Public identity in URLs and the API (never the database id).",
                                   max_length=20, unique=True),
        ),
        migrations.AlterModelOptions(
            name="apitoken",
            options={"ordering": ["-created_at", "-id"]},
        ),
    ]
