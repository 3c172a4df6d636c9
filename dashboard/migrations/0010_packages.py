"""Deployed Scrapy projects: packages, their versions and the ``deploy`` permission (issue 13)."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("dashboard", "0009_alerts"),
    ]

    operations = [
        migrations.CreateModel(
            name="Package",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=64)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("owner", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="packages",
                                            to=settings.AUTH_USER_MODEL)),
            ],
            options={
                "ordering": ["name", "id"],
                "permissions": [("deploy", "Can deploy code (upload Scrapy projects that run on the workers)")],
                "constraints": [models.UniqueConstraint(fields=("owner", "name"), name="unique_package_name_per_owner")],
            },
        ),
        migrations.CreateModel(
            name="PackageVersion",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("version", models.CharField(max_length=100)),
                ("kind", models.CharField(choices=[("egg", "egg"), ("zip", "zip")], max_length=8)),
                ("data", models.BinaryField()),
                ("sha256", models.CharField(db_index=True, max_length=64)),
                ("size", models.PositiveIntegerField()),
                ("settings_module", models.CharField(max_length=200)),
                ("spiders", models.JSONField(default=list)),
                ("uploaded_at", models.DateTimeField(auto_now_add=True)),
                ("package", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="versions",
                                              to="dashboard.package")),
                ("uploader", models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+",
                                               to=settings.AUTH_USER_MODEL)),
            ],
            options={
                "ordering": ["uploaded_at", "id"],
                "constraints": [models.UniqueConstraint(fields=("package", "version"), name="unique_version_per_package")],
            },
        ),
    ]
