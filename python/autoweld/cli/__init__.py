"""Command-line entry points (autoweld-export, -eval, -inspect, -bench, -ledger)."""
