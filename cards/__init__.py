"""Model-card templates (Jinja), installed as the package data of ``cohere._cards``."""
