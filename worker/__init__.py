"""Background work: RQ jobs (delivery retries, bounces, later digests, sync, retention) and the scheduler."""
