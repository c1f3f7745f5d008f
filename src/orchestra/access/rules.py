"""The one table of who may call what: every route of the API and the dashboard, by endpoint.

A route missing here is refused (and a test walks the URL map for any such route). To open a
new route, add one line: its endpoint name (``blueprint.view``) and the rule it follows.
"""

from __future__ import annotations

from orchestra.access.roles import Role, Rule

OPEN = Rule(None, anonymous="always")  # /health, sign-in, static files: no token needed
READ = Rule(Role.READ, anonymous="reads")  # open without a token unless reads are protected
RUN = Rule(Role.RUN)  # start tasks; kill and delete one's own (the service checks whose)
OPERATE = Rule(Role.OPERATE)  # modules, anyone's tasks, prunes
ADMIN = Rule(Role.ADMIN)  # tokens and the audit log
WORKER = Rule(Role.WORKER)  # what workers call, and nothing else

RULES: dict[str, Rule] = {
    # the API
    "system.health": OPEN,
    "system.openapi": READ,
    "modules.list_modules": READ,
    "modules.get_module": READ,
    "modules.register_module": OPERATE,
    "modules.update_module": OPERATE,
    "modules.publish_module": OPERATE,
    "modules.stage_module": OPERATE,
    "modules.delete_module": OPERATE,
    "modules.run_module": RUN,
    "tasks.list_tasks": READ,
    "tasks.get_task": READ,
    "tasks.task_log": READ,
    "tasks.task_output": READ,
    "tasks.task_output_file": READ,
    "tasks.kill_task": RUN,
    "tasks.delete_task": RUN,
    "tasks.prune_tasks": OPERATE,
    "models.train_module": RUN,
    "models.list_models": READ,
    "models.get_model": READ,
    "models.download_model": READ,
    "models.get_aliases": READ,
    "models.task_metrics": READ,
    "models.delete_model": OPERATE,
    "models.put_alias": OPERATE,
    "models.delete_alias": OPERATE,
    "access.create_token": ADMIN,
    "access.list_tokens": ADMIN,
    "access.revoke_token": ADMIN,
    "access.audit_log": ADMIN,
    "workers.check_worker": WORKER,
    "workers.module_package": WORKER,
    "workers.receive_output": WORKER,
    "workers.append_log": WORKER,
    "models.worker_model": WORKER,
    "models.has_blob": WORKER,
    "models.receive_blob": WORKER,
    "models.receive_training": WORKER,
    # the site and the dashboard
    "site.root": OPEN,
    "site.swagger_file": OPEN,
    "site.docs": READ,
    "site.docs_document": READ,
    "site.metrics": READ,
    "web.static": OPEN,
    "web.signin": OPEN,
    "web.signin_post": OPEN,
    "web.signout": OPEN,
    "web.modules": READ,
    "web.module": READ,
    "web.tasks": READ,
    "web.task": READ,
    "web.task_log": READ,
    "web.output": READ,
    "web.output_file": READ,
    "web.machine": READ,
    "web.register": OPERATE,
    "web.register_post": OPERATE,
    "web.update": OPERATE,
    "web.publish": OPERATE,
    "web.stage": OPERATE,
    "web.remove": OPERATE,
    "web.run": RUN,
    "web.kill": RUN,
    "web.train": RUN,
    "web.task_metrics": READ,
    "web.move_alias": OPERATE,
    "web.audit": ADMIN,
}


def rule_for(endpoint: str) -> Rule | None:
    """The rule of ``endpoint``; None when it has none (then it is refused)."""
    return RULES.get(endpoint)
