"""dpdistill's Flower app (see deploy/flower_app/pyproject.toml)."""
