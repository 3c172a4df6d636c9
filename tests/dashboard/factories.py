"""Definitions and projects built in code for tests."""

from dashboard.models import Project, validate_definition


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
