"""The REST API of jobs: views (submit, read, stream), control (cancel, pause), operations (replay)."""
