"""Tasks: status values, the lifecycle that moves them, and the scheduler."""
