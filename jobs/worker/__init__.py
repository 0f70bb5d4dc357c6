"""The worker side: claim, governance re-check, the handler run with its context, outcomes,
error classes, the lease reaper."""
