"""Orchestration: the jobs that run several stages in a row (train and compare models, retrain and
publish, the quickstart). They may import every stage (``towers``, ``ranking``, ``serving``); the
stages never import them."""
