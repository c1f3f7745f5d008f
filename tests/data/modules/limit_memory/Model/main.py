"""Hold ever more memory (each megabyte written, so that it is really used)."""

held = []
while True:
    held.append(b"m" * (1024 * 1024))
