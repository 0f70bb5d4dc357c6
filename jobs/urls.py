from django.urls import path

from jobs import api

urlpatterns = [
    path("jobs", api.JobListCreateView.as_view(), name="job-list"),
    path("jobs/<str:job_id>", api.JobDetailView.as_view(), name="job-detail"),
    path("jobs/<str:job_id>/audit", api.JobAuditView.as_view(), name="job-audit"),
    path("jobs/<str:job_id>/events", api.JobEventsView.as_view(), name="job-events"),
]
