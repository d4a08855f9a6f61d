"""Operations: the ``fraudstream`` command and the processes it runs (Kafka, Redis, workers).

This is the composition root; it may import every layer, and no layer imports it.
"""
