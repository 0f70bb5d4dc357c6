"""Writes callers use: submit, control (cancel, pause), operations (replay, discard, rollback), retention."""
