#!/usr/bin/env python
"""Django's command-line utility for Crawlsite."""
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "crawlsite.settings")
    from django.core.exceptions import ImproperlyConfigured

    try:
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # A bad environment value: one clear line, not a traceback.
        sys.exit(f"Configuration error: {exc}")


if __name__ == "__main__":
    main()
