"""Report stage: figures and tables that summarise each model and compare models."""
