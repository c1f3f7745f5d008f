"""Hold 160 MB: more than this module's own limit, less than the server's."""

held = [b"m" * (1024 * 1024) for _ in range(160)]
print("held", len(held), "MB")
