from django.urls import path

from audit import api

urlpatterns = [
    path("audit/public-key", api.AuditPublicKeyView.as_view(), name="audit-public-key"),
]
