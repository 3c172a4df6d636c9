"""Definitions and projects built in code for tests."""

import hashlib

from django.contrib.auth.models import Permission

from dashboard.models import Package, PackageVersion, Project, validate_definition


def definition(name="Shop", url="http://127.0.0.1:9/", **overrides):
    data = {
        "name": name,
        "start_urls": [url],
        "item": {"url_pattern": "/product/", "fields": [{"name": "title", "selector": "h1::text", "many": False}]},
        **overrides,
    }
    return data


def project_for(user, name="Shop", **overrides):
    project = Project(owner=user)
    project.set_definition(validate_definition(definition(name, **overrides)))
    project.save()
    return project


def package_for(user, name="shopbot", version="v1", spiders=("shop",), data=b"PK\x05\x06" + b"\x00" * 18):
    """A deployed package with one version, stored as an upload would be (without inspecting it:
    tests of uploads go through PackageVersion.add)."""
    package, _ = Package.objects.get_or_create(owner=user, name=name)
    PackageVersion.objects.create(package=package, version=version, kind="zip", data=data,
                                  sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                                  settings_module="shopbot.settings", spiders=list(spiders), uploader=user)
    return package


def grant_deploy(user):
    user.user_permissions.add(Permission.objects.get(codename="deploy", content_type__app_label="dashboard"))
    return type(user).objects.get(pk=user.pk)  # a fresh object: permissions are cached per instance
