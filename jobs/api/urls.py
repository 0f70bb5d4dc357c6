from django.urls import path

from jobs.api import batch, control, live, me, operations, policy, retention, views

urlpatterns = [
    path("jobs", live.jobs_collection, name="job-list"),
    # Before jobs/<str:job_id>, which would take "cancel", "cleanup" or "batch" for a job id.
    path("jobs/cancel", control.JobBulkCancelView.as_view(), name="job-bulk-cancel"),
    path("jobs/cleanup", retention.JobsCleanupView.as_view(), name="jobs-cleanup"),
    path("jobs/batch", batch.JobBatchView.as_view(), name="job-batch"),
    path("jobs/<str:job_id>", live.job_detail, name="job-detail"),
    path("jobs/<str:job_id>/cancel", control.JobCancelView.as_view(), name="job-cancel"),
    path("jobs/<str:job_id>/audit", views.JobAuditView.as_view(), name="job-audit"),
    path("jobs/<str:job_id>/events", live.job_events, name="job-events"),
    path("jobs/<str:job_id>/replay", operations.JobReplayView.as_view(), name="job-replay"),
    path("policy/simulate", policy.PolicySimulateView.as_view(), name="policy-simulate"),
    path("sessions/<str:session_id>", control.SessionDetailView.as_view(), name="session-detail"),
    path("sessions/<str:session_id>/pause", control.SessionPauseView.as_view(), name="session-pause"),
    path("sessions/<str:session_id>/resume", control.SessionResumeView.as_view(), name="session-resume"),
    path("me", me.MeView.as_view(), name="me"),
]
