"""Tests of the standard plugins (rlgen-plugins)."""
