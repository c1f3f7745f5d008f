"""Helpers and fixtures shared by several test files: real services, processes, HTTP."""
