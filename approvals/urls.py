from django.urls import path

from approvals import api, api_stats

urlpatterns = [
    path("approvals", api.ApprovalListView.as_view(), name="approval-list"),
    path("approvals/stats", api_stats.ApprovalStatsView.as_view(), name="approval-stats"),
    path("approvals/<str:approval_id>", api.ApprovalDetailView.as_view(), name="approval-detail"),
    path("approvals/<str:approval_id>/approve", api.ApprovalApproveView.as_view(), name="approval-approve"),
    path("approvals/<str:approval_id>/deny", api.ApprovalDenyView.as_view(), name="approval-deny"),
]
