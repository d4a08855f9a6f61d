"""Offline jobs: history import, training and evaluation, and the traffic simulator."""
