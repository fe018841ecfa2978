"""The config file: its schema (pydantic), YAML loading, --set overrides and messages."""
