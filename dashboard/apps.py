from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"
    verbose_name = "Crawlsite"

    def ready(self):
        from dashboard import monitors, signals  # noqa: F401  (connects the receivers)
