from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from dashboard.api import api
from dashboard.views import PasswordChangeView


def _api_handles_its_own_auth(patterns):
    """The API answers 401 itself (session or bearer token) instead of redirecting to a login page."""
    for pattern in patterns:
        if hasattr(pattern, "url_patterns"):
            _api_handles_its_own_auth(pattern.url_patterns)
        else:
            pattern.callback.login_required = False
    return patterns


api_patterns, api_app, api_namespace = api.urls

urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/password/", PasswordChangeView.as_view(), name="password_change"),
    path("api/", (_api_handles_its_own_auth(api_patterns), api_app, api_namespace)),
    path("admin/", admin.site.urls),
    path("rq/", include("django_rq.urls")),
    path("", include("dashboard.urls")),
]

handler404 = "dashboard.views.page_not_found"
handler500 = "dashboard.views.server_error"
