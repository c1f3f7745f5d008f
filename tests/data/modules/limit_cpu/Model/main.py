"""Spin on the CPU until something stops it."""

count = 0
while True:
    count += 1
