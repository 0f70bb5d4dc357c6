from django.contrib import admin
from django.urls import include, path

from config import views
from config.errors import api_not_found, api_server_error
from jobs.api.schema_view import SchemaDocsView, SchemaView

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.metrics, name="metrics"),
    path("admin/monitor/", include("jobs.admin.monitor")),
    path("admin/", admin.site.urls),
    path("api/v1/", include("jobs.api.urls")),
    path("api/v1/", include("approvals.urls")),
    path("api/v1/", include("audit.urls")),
    path("api/v1/", include("governance.me_api")),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/docs/", SchemaDocsView.as_view(url_name="schema"), name="api-docs"),
]

handler404 = api_not_found
handler500 = api_server_error
