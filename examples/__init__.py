"""Example job types shipped with the platform; each exercises one path of the lifecycle.

An add-on app like any other: it registers its job types through ``JOBS_TYPE_MODULES``
(``examples.job_types`` by default) and keeps its own model, the local store the two-stage
examples write to. The README tour uses them.
"""
