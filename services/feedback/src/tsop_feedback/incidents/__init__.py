"""Incident notices (§5.3): the customers of tickets linked to an incident are told how it goes."""
