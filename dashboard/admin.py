from django.contrib import admin

from dashboard.forms import ProjectAdminForm
from dashboard.models import (ApiToken, Channel, Crawl, CrawlHistory, Delivery, Item, Monitor, Package,
                               PackageVersion, Project, Schedule, ScheduleFire)


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    form = ProjectAdminForm
    list_display = ["name", "owner", "updated_at"]
    list_filter = ["owner"]
    search_fields = ["name"]


@admin.register(Crawl)
class CrawlAdmin(admin.ModelAdmin):
    list_display = ["code", "project", "status", "workers", "created_at", "finished_at"]
    list_filter = ["status"]
    search_fields = ["code", "project__name"]
    readonly_fields = ["code", "project", "definition", "status", "status_changed_at", "reason", "stalled_since",
                       "stalled_reason", "workers", "launched_workers", "stats", "created_at", "started_at",
                       "finished_at"]

    def has_add_permission(self, request):
        return False  # crawls are launched from the dashboard, the API or `manage.py crawl`

    def has_change_permission(self, request, obj=None):
        # Saving the form would write back a row read earlier (a lost update of the status); a
        # crawl changes only through its lifecycle (Crawl.LIFECYCLE): the page, the API, crawlctl.
        return False


@admin.register(CrawlHistory)
class CrawlHistoryAdmin(admin.ModelAdmin):
    list_display = ["crawl", "updated_at"]
    search_fields = ["crawl__code"]
    raw_id_fields = ["crawl"]

    def has_add_permission(self, request):
        return False  # kept by the conductor (dashboard/history.py)

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
    list_display = ["key", "crawl", "url", "invalid", "created_at"]
    list_filter = ["invalid"]
    search_fields = ["key", "url"]
    raw_id_fields = ["crawl"]

    def has_add_permission(self, request):
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "name", "user", "created_at", "last_used_at", "expires_at"]
    list_filter = ["user"]
    search_fields = ["name", "prefix", "public_id"]
    readonly_fields = ["public_id", "digest", "prefix", "created_at", "last_used_at"]

    def has_add_permission(self, request):
        return False  # a token's secret is shown once at creation: the account page, the API or `apitoken`


class ViewOnlyAdmin(admin.ModelAdmin):
    """Shown, never edited here: schedules change through their one validator (pages, API), and a
    fire row is the claim of a due time, written by the conductor only."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Schedule)
class ScheduleAdmin(ViewOnlyAdmin):
    list_display = ["code", "project", "cron", "timezone", "enabled", "next_due"]
    list_filter = ["enabled", "overlap", "catch_up"]
    search_fields = ["code", "project__name", "cron"]


@admin.register(ScheduleFire)
class ScheduleFireAdmin(ViewOnlyAdmin):
    list_display = ["schedule", "due", "outcome", "reason", "crawl", "fired_at"]
    list_filter = ["outcome"]
    search_fields = ["schedule__code", "crawl__code", "reason"]


@admin.register(Monitor)
class MonitorAdmin(admin.ModelAdmin):
    list_display = ["public_id", "project", "kind", "field", "threshold", "created_at"]
    list_filter = ["kind"]
    readonly_fields = ["public_id", "created_at"]


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    list_display = ["public_id", "project", "kind", "target", "always", "created_at"]
    list_filter = ["kind"]
    exclude = ["secret"]  # never shown back; set through the project page or the API
    readonly_fields = ["public_id", "created_at"]


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ["created_at", "project", "channel_kind", "target", "attempt", "outcome", "detail"]
    list_filter = ["outcome", "channel_kind"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # the delivery log is a record of what happened


class PackageVersionInline(admin.TabularInline):
    model = PackageVersion
    fields = ["version", "kind", "size", "sha256", "spiders", "uploader", "uploaded_at"]
    readonly_fields = fields
    extra = 0
    can_delete = True

    def has_add_permission(self, request, obj=None):
        return False  # versions are uploaded (scrapyd-deploy, the API, the Code page): inspected first


@admin.register(Package)
class PackageAdmin(admin.ModelAdmin):
    """Deployed Scrapy projects. Who may upload is the ``dashboard | package | Can deploy code``
    permission (staff have it by default): grant it on a user or a group."""

    list_display = ["name", "owner", "created_at"]
    list_filter = ["owner"]
    search_fields = ["name"]
    readonly_fields = ["owner", "name", "created_at"]
    inlines = [PackageVersionInline]

    def has_add_permission(self, request):
        return False
