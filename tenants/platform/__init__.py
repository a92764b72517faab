"""What every process stands on: configuration, the database, Redis, heartbeats and the RQ job registry."""
