import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("dashboard", "0004_spiders_by_name"),
    ]

    operations = [
        migrations.AddField(
            model_name="crawl",
            name="status_changed_at",
            field=models.DateTimeField(default=django.utils.timezone.now, help_text="When the status last changed."),
        ),
        migrations.AddField(
            model_name="crawl",
            name="stalled_since",
            field=models.DateTimeField(blank=True, null=True,
                                       help_text="Set while a running crawl makes no progress with work queued."),
        ),
        migrations.AddField(
            model_name="crawl",
            name="stalled_reason",
            field=models.TextField(blank=True),
        ),
    ]
