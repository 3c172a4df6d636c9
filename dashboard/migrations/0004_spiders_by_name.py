"""Custom spiders are chosen by name (CRAWLSITE_SPIDERS), no longer by a free dotted path.

A stored ``spider`` that is a dotted path listed in the operator's CRAWLSITE_SPIDERS becomes
that entry's name; a crawl that is not over also gets the path frozen for its workers
(``operator.spider_class``). Any other dotted path is left as it is: the validator refuses it
with a message listing the installed spiders when the project is next saved or launched, and the
form offers it as "(not installed)". Nothing is imported.
"""

from django.conf import settings
from django.db import migrations

TERMINAL = ("finished", "cancelled", "failed")


def _names_by_path():
    return {path: name for name, path in getattr(settings, "CRAWLSITE_SPIDERS", {}).items()}


def forwards(apps, schema_editor):
    names = _names_by_path()
    if not names:
        return
    Project = apps.get_model("dashboard", "Project")
    Crawl = apps.get_model("dashboard", "Crawl")
    for project in Project.objects.exclude(definition__spider="").iterator():
        path = (project.definition or {}).get("spider") or ""
        if path in names:
            project.definition["spider"] = names[path]
            project.save(update_fields=["definition"])
    for crawl in Crawl.objects.exclude(status__in=TERMINAL).iterator():
        definition = crawl.definition or {}
        path = definition.get("spider") or ""
        if path in names:
            definition["spider"] = names[path]
            definition.setdefault("operator", {})["spider_class"] = path
            crawl.save(update_fields=["definition"])


def backwards(apps, schema_editor):
    Project = apps.get_model("dashboard", "Project")
    spiders = getattr(settings, "CRAWLSITE_SPIDERS", {})
    for project in Project.objects.exclude(definition__spider="").iterator():
        name = (project.definition or {}).get("spider") or ""
        if name in spiders:
            project.definition["spider"] = spiders[name]
            project.save(update_fields=["definition"])


class Migration(migrations.Migration):

    dependencies = [
        ("dashboard", "0003_tokens_name_expiry_public_id"),
    ]

    operations = [
        migrations.RunPython(forwards, backwards),
    ]
