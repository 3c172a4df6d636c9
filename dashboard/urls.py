from django.urls import path, re_path

from dashboard import scrapyd, views

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("healthz", views.healthz, name="healthz"),
    path("projects/", views.project_list, name="project-list"),
    path("projects/new/", views.project_create, name="project-create"),
    path("projects/import", views.project_import, name="project-import"),
    path("projects/preview", views.project_form_preview, name="project-form-preview"),
    path("projects/<str:code>/", views.project_detail, name="project-detail"),
    path("projects/<str:code>/edit/", views.project_edit, name="project-edit"),
    path("projects/<str:code>/delete/", views.project_delete, name="project-delete"),
    path("projects/<str:code>/definition.json", views.project_definition, name="project-definition"),
    path("projects/<str:code>/preview", views.project_preview, name="project-preview"),
    path("projects/<str:code>/launch", views.project_launch, name="project-launch"),
    path("projects/<str:code>/schedules/new/", views.schedule_create, name="schedule-create"),
    path("schedules/<str:code>/", views.schedule_detail, name="schedule-detail"),
    path("schedules/<str:code>/edit/", views.schedule_edit, name="schedule-edit"),
    path("schedules/<str:code>/enable", views.schedule_enable, name="schedule-enable"),
    path("schedules/<str:code>/disable", views.schedule_disable, name="schedule-disable"),
    path("schedules/<str:code>/delete", views.schedule_delete, name="schedule-delete"),
    path("projects/<str:code>/monitors/new", views.project_monitor_create, name="project-monitor-create"),
    path("projects/<str:code>/monitors/<str:monitor_id>/delete", views.project_monitor_delete,
         name="project-monitor-delete"),
    path("projects/<str:code>/channels/new", views.project_channel_create, name="project-channel-create"),
    path("projects/<str:code>/channels/<str:channel_id>/delete", views.project_channel_delete,
         name="project-channel-delete"),
    path("projects/<str:code>/channels/<str:channel_id>/test", views.project_channel_test,
         name="project-channel-test"),
    path("crawls/<str:code>/", views.crawl_detail, name="crawl-detail"),
    re_path(r"^crawls/(?P<code>[a-z0-9]+)/(?P<action>pause|resume|stop|force-stop|cancel|scale)$", views.crawl_control,
            name="crawl-control"),
    path("crawls/<str:code>/items/", views.crawl_items, name="crawl-items"),
    path("crawls/<str:code>/compare/", views.crawl_compare, name="crawl-compare"),
    path("crawls/<str:code>/items/<str:key>.json", views.item_json, name="item-json"),
    path("crawls/<str:code>/export", views.crawl_export, name="crawl-export"),
    path("crawls/<str:code>/xlsx", views.crawl_xlsx_request, name="crawl-xlsx-request"),
    path("crawls/<str:code>/xlsx/<int:snapshot>/", views.crawl_xlsx, name="crawl-xlsx"),
    path("crawls/<str:code>/xlsx/<int:snapshot>/status", views.crawl_xlsx_status, name="crawl-xlsx-status"),
    path("crawls/<str:code>/xlsx/<int:snapshot>/file", views.crawl_xlsx_file, name="crawl-xlsx-file"),
    path("projects/<str:code>/export", views.project_export, name="project-export"),
    path("code/", views.package_list, name="package-list"),
    path("code/upload", views.package_upload, name="package-upload"),
    path("code/<str:name>/", views.package_detail, name="package-detail"),
    path("code/<str:name>/run", views.package_run, name="package-run"),
    path("code/<str:name>/delete", views.package_delete, name="package-delete"),
    path("code/<str:name>/versions/<str:version>/delete", views.package_version_delete, name="package-version-delete"),
    path("account/", views.account, name="account"),
    path("account/tokens/new", views.account_token_create, name="account-token-create"),
    path("account/tokens/<str:token_id>/revoke", views.account_token_revoke, name="account-token-revoke"),
] + [
    path(f"scrapyd/{name}", view, name=f"scrapyd-{name.removesuffix('.json')}")
    for name, view in scrapyd.ENDPOINTS.items()
]
