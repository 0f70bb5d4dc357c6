from django.urls import path

from jobs.api import control, operations, policy, retention, views

urlpatterns = [
    path("jobs", views.JobListCreateView.as_view(), name="job-list"),
    # Before jobs/<str:job_id>, which would take "cancel" or "cleanup" for a job id.
    path("jobs/cancel", control.JobBulkCancelView.as_view(), name="job-bulk-cancel"),
    path("jobs/cleanup", retention.JobsCleanupView.as_view(), name="jobs-cleanup"),
    path("jobs/<str:job_id>", views.JobDetailView.as_view(), name="job-detail"),
    path("jobs/<str:job_id>/cancel", control.JobCancelView.as_view(), name="job-cancel"),
    path("jobs/<str:job_id>/audit", views.JobAuditView.as_view(), name="job-audit"),
    path("jobs/<str:job_id>/events", views.JobEventsView.as_view(), name="job-events"),
    path("jobs/<str:job_id>/replay", operations.JobReplayView.as_view(), name="job-replay"),
    path("policy/simulate", policy.PolicySimulateView.as_view(), name="policy-simulate"),
    path("sessions/<str:session_id>", control.SessionDetailView.as_view(), name="session-detail"),
    path("sessions/<str:session_id>/pause", control.SessionPauseView.as_view(), name="session-pause"),
    path("sessions/<str:session_id>/resume", control.SessionResumeView.as_view(), name="session-resume"),
]
