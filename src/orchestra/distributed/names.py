"""The names that the API's Celery executor and the workers share: task, messages, channels.

Below both sides, importing nothing, so that neither imports the other for them.
"""

from __future__ import annotations

TASK_NAME = "orchestra.run_task"
MESSAGE_PREFIX = "orchestra-task-"  # a message's id: the prefix, the task id, a dash, a nonce
NOTIFY_CHANNEL = "orchestra_tasks"  # workers NOTIFY a task's id here once they have ended it
KILL_CHANNEL = "orchestra-kill"  # the broker's pub/sub channel that kills are announced on


def message_id(task_id: int, nonce: str) -> str:
    """The id of one message for task ``task_id``."""
    return f"{MESSAGE_PREFIX}{task_id}-{nonce}"


def task_of_message(message_id: str) -> int | None:
    """The task id a message id names, or None for a message that is not ours."""
    if not message_id.startswith(MESSAGE_PREFIX):
        return None
    number = message_id[len(MESSAGE_PREFIX) :].split("-", 1)[0]
    return int(number) if number.isdigit() else None
