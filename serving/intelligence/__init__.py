"""Counterfeit intelligence: seller networks (rings), investigator cases, alliance sharing and reports."""
