"""What the REST API and the dashboard share, below both of them.

The request's service (``routing``), reading arguments from a request (``inputs``), who is
calling and whether the rules let them (``auth``), errors turned into answers (``errors``),
and uploads and downloads of files (``files``). ``orchestra.app.create_app`` puts the API
and the dashboard together on top of these.
"""
