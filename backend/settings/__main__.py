"""`python -m backend.settings`: print settings.yaml as the settings table defines it."""
from backend.settings.table import defaults_yaml

print(defaults_yaml(), end="")
