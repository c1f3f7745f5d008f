"""Who may do what: roles, the caller of the moment, tokens, the audit log.

Below the service and every front end: the API, the dashboard and the command line all
judge a caller through these modules, and the parts that change something record it here.
"""
