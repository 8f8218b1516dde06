"""Example gateway plugins: a compliance hook and a line-based connector."""
