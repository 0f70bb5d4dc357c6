from django.urls import path

from approvals.api import JobReplayView
from jobs import api, api_control, api_policy

urlpatterns = [
    path("jobs", api.JobListCreateView.as_view(), name="job-list"),
    # Before jobs/<str:job_id>, which would take "cancel" for a job id.
    path("jobs/cancel", api_control.JobBulkCancelView.as_view(), name="job-bulk-cancel"),
    path("jobs/<str:job_id>", api.JobDetailView.as_view(), name="job-detail"),
    path("jobs/<str:job_id>/cancel", api_control.JobCancelView.as_view(), name="job-cancel"),
    path("jobs/<str:job_id>/audit", api.JobAuditView.as_view(), name="job-audit"),
    path("jobs/<str:job_id>/events", api.JobEventsView.as_view(), name="job-events"),
    path("jobs/<str:job_id>/replay", JobReplayView.as_view(), name="job-replay"),
    path("policy/simulate", api_policy.PolicySimulateView.as_view(), name="policy-simulate"),
    path("sessions/<str:session_id>", api_control.SessionDetailView.as_view(), name="session-detail"),
    path("sessions/<str:session_id>/pause", api_control.SessionPauseView.as_view(), name="session-pause"),
    path("sessions/<str:session_id>/resume", api_control.SessionResumeView.as_view(), name="session-resume"),
]
