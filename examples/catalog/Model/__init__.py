"""Example catalog module: synthetic events of one parameter between two times."""
